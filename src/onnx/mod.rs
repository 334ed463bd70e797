//! ONNX files: writing them (`writer`), reading them safely (`model_file`) and checking them against the
//! grading contract (`contract`, documented in graders/CONTRACT.md).

pub mod contract;
pub mod model_file;
pub mod writer;

pub use contract::{Contract, ModelKind};
pub use model_file::{ModelFile, ModelLimits};
