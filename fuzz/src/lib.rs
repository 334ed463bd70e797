//! Shared checks for the fuzz targets (see `checks.rs`).
pub mod checks;
pub mod mutate;
