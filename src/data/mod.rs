//! The homework's data: label CSVs, image files, digit folders (`data/*.png` + `train.csv`/`val.csv`)
//! and plain folders of images.

pub mod digits;
pub mod images;
pub mod labels;

pub use digits::DigitSet;
pub use images::ImageLimits;
