//! Scores: classification accuracy here; FID, KID and face accuracy beside it as they land.

pub mod accuracy;
pub mod inception;
