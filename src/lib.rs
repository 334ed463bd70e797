//! gradekit: grading the DLCV homework-2 models (GAN faces, conditional diffusion digits, DANN) from
//! ONNX files, with tract (pure Rust) or ONNX Runtime.
//!
//! Where things live: `onnx` (writing, reading and checking models), `runtime` (tract / ONNX Runtime),
//! `data` (CSVs, images, digit folders), `metrics` (accuracy, FID, ...), `report` (table, JSON,
//! JUnit, Markdown), `spec` (graders/*.toml), `tasks` (one module per `grade` subcommand).

pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod fixtures;
pub mod graders;
pub mod memory;
pub mod metrics;
pub mod nn;
pub mod onnx;
pub mod pictures;
pub mod planted;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run_status;
pub mod runtime;
pub mod safe_fs;
pub mod spec;
pub mod tasks;
