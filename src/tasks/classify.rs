//! Running a classifier ONNX model over images: normalisation from the contract, batching (respecting
//! a batch size fixed in the file), and argmax that refuses NaN.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use image::RgbImage;

use crate::metrics::accuracy::argmax;
use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::runtime::{self, Engine, Input, RuntimeOptions};

pub struct Classifier {
    pub file: ModelFile,
    pub contract: Contract,
    pub engine: Box<dyn Engine>,
    mean: Vec<f32>,
    std: Vec<f32>,
    pub batch: usize,
    pub classes: usize,
}

impl Classifier {
    pub fn open(path: &Path, overrides: &BTreeMap<String, String>, opts: &RuntimeOptions, batch: usize) -> Result<Self> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        let contract = Contract::resolve(&file, ModelKind::Classifier, overrides);
        contract.ensure_ok(&file)?;
        let mean = contract.meta_f32_list("input_mean", 3)?;
        let std = contract.meta_f32_list("input_std", 3)?;
        if std.contains(&0.0) {
            anyhow::bail!("{}: input_std contains 0", path.display());
        }
        let engine = runtime::open(&file, opts)?;
        let batch = contract.fixed_batch.unwrap_or(batch.max(1));
        Ok(Classifier { file, contract, engine, mean, std, batch, classes: 10 })
    }

    /// Logits for up to `batch` images of 28x28.
    pub fn logits(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut all = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch) {
            let (h, w) = (chunk[0].height() as usize, chunk[0].width() as usize);
            let plane = 3 * h * w;
            // A file with a fixed batch gets padded batches; the padding rows are dropped.
            let n = self.contract.fixed_batch.unwrap_or(chunk.len());
            let mut x = vec![0f32; n * plane];
            for (i, img) in chunk.iter().enumerate() {
                crate::data::images::to_chw(img, &self.mean, &self.std, &mut x[i * plane..(i + 1) * plane]);
            }
            let out = self.engine.run(&[Input::f32(&self.contract.inputs[0], &[n, 3, h, w], &x)], &self.contract.output)?;
            runtime::expect_shape(&out, &[n, self.classes], &self.file.path.display().to_string())?;
            all.extend(out.data.chunks(self.classes).take(chunk.len()).map(|r| r.to_vec()));
        }
        Ok(all)
    }

    pub fn predict(&mut self, images: &[RgbImage]) -> Result<Vec<Option<u8>>> {
        Ok(self.logits(images)?.iter().map(|l| argmax(l)).collect())
    }
}
