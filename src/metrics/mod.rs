//! Scores: classification accuracy, FID and KID (with pytorch-fid's Inception features), face accuracy.

pub mod accuracy;
pub mod digit_features;
pub mod digit_quality;
pub mod faces;
pub mod fid;
pub mod fid_bootstrap;
pub mod inception;
pub mod interval;
pub mod kid;
mod linalg;
pub mod memorisation;
pub mod npz;
