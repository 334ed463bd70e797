//! Classification accuracy the way the course computes it (correct / total), with per-class
//! accuracy and the confusion matrix on top.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub total: u64,
    pub correct: u64,
    pub accuracy: f64,
    /// Accuracy per true class; `None` for a class with no images.
    pub per_class: Vec<Option<f64>>,
    pub per_class_count: Vec<u64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Predictions that were not a class (the model gave NaN/Inf logits): counted as wrong.
    pub invalid: u64,
}

/// Accumulates predictions; `None` marks an invalid prediction.
pub struct AccuracyCounter {
    classes: usize,
    confusion: Vec<Vec<u64>>,
    invalid_per_class: Vec<u64>,
}

impl AccuracyCounter {
    pub fn new(classes: usize) -> Self {
        AccuracyCounter { classes, confusion: vec![vec![0; classes]; classes], invalid_per_class: vec![0; classes] }
    }

    pub fn add(&mut self, truth: u8, predicted: Option<u8>) {
        let t = truth as usize;
        match predicted {
            Some(p) if (p as usize) < self.classes => self.confusion[t][p as usize] += 1,
            _ => self.invalid_per_class[t] += 1,
        }
    }

    pub fn finish(&self) -> Accuracy {
        let per_class_count: Vec<u64> =
            (0..self.classes).map(|c| self.confusion[c].iter().sum::<u64>() + self.invalid_per_class[c]).collect();
        let correct: u64 = (0..self.classes).map(|c| self.confusion[c][c]).sum();
        let total: u64 = per_class_count.iter().sum();
        Accuracy {
            total,
            correct,
            accuracy: if total == 0 { 0.0 } else { correct as f64 / total as f64 },
            per_class: (0..self.classes)
                .map(|c| (per_class_count[c] > 0).then(|| self.confusion[c][c] as f64 / per_class_count[c] as f64))
                .collect(),
            per_class_count,
            confusion: self.confusion.clone(),
            invalid: self.invalid_per_class.iter().sum(),
        }
    }
}

/// The index of the largest logit; `None` when any logit is NaN or infinite (no honest answer).
pub fn argmax(logits: &[f32]) -> Option<u8> {
    if logits.is_empty() || logits.iter().any(|v| !v.is_finite()) {
        return None;
    }
    // First maximum wins on ties, like torch.argmax / numpy.argmax.
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    Some(best as u8)
}

impl Accuracy {
    /// The confusion matrix as text rows, for the terminal report.
    pub fn confusion_table(&self) -> String {
        let mut s = String::from("true\\pred");
        for p in 0..self.confusion.len() {
            s.push_str(&format!("{p:>6}"));
        }
        s.push('\n');
        for (t, row) in self.confusion.iter().enumerate() {
            s.push_str(&format!("{t:>9}"));
            for v in row {
                s.push_str(&format!("{v:>6}"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_nan() {
        let mut c = AccuracyCounter::new(3);
        c.add(0, Some(0));
        c.add(0, Some(1));
        c.add(1, Some(1));
        c.add(2, None);
        let a = c.finish();
        assert_eq!((a.total, a.correct, a.invalid), (4, 2, 1));
        assert!((a.accuracy - 0.5).abs() < 1e-12);
        assert_eq!(a.per_class, vec![Some(0.5), Some(1.0), Some(0.0)]);
        assert_eq!(a.confusion[0], vec![1, 1, 0]);
    }

    #[test]
    fn argmax_ties_and_non_finite() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[1.0, f32::NAN]), None);
        assert_eq!(argmax(&[f32::INFINITY, 0.0]), None);
        assert_eq!(argmax(&[]), None);
    }
}
