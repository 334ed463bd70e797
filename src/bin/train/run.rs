//! What every training run shares: the output folder, the loss log (CSV + SVG curves), progress bar
//! and checkpoint paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gradekit::plot::{line_chart, smooth, Series};
use indicatif::ProgressBar;

pub struct RunDir {
    pub root: PathBuf,
    /// Without a terminal (logs, CI, remote runs) a line every 30 s replaces the progress bar.
    last_line: std::time::Instant,
    started: std::time::Instant,
    start_step: u64,
    /// name -> (step, value)
    pub curves: BTreeMap<String, Vec<(f64, f64)>>,
    pub pb: ProgressBar,
}

impl RunDir {
    pub fn create(root: &Path, total_steps: u64, start: u64, what: &str) -> Result<RunDir> {
        std::fs::create_dir_all(root.join("samples")).with_context(|| format!("creating the output folder {}", root.display()))?;
        let pb = ProgressBar::new(total_steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb.set_position(start);
        let now = std::time::Instant::now();
        Ok(RunDir { root: root.to_path_buf(), curves: BTreeMap::new(), pb, last_line: now, started: now, start_step: start })
    }

    pub fn log(&mut self, step: i64, values: &[(&str, f64)]) {
        for (k, v) in values {
            self.curves.entry(k.to_string()).or_default().push((step as f64, *v));
        }
        let msg: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        self.pb.set_message(msg.join("  "));
        if self.pb.is_hidden() && self.last_line.elapsed().as_secs() >= 30 {
            self.last_line = std::time::Instant::now();
            let rate = (step as u64).saturating_sub(self.start_step) as f64 / self.started.elapsed().as_secs_f64();
            eprintln!("step {step}/{}: {} ({rate:.1} steps/s)", self.pb.length().unwrap_or(0), msg.join("  "));
        }
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
    }

    /// Writes losses.csv and the curves as SVG (`losses.svg`; accuracy-like curves in `metrics.svg`).
    pub fn write_curves(&self, title: &str) -> Result<()> {
        let mut csv = String::from("series,step,value\n");
        for (k, pts) in &self.curves {
            for (s, v) in pts {
                csv.push_str(&format!("{k},{s},{v}\n"));
            }
        }
        gradekit::report::write_atomic(&self.root.join("losses.csv"), csv.as_bytes())?;
        let (metrics, losses): (Vec<_>, Vec<_>) = self.curves.iter().partition(|(k, _)| k.contains("acc"));
        let smoothed: Vec<(String, Vec<(f64, f64)>)> =
            losses.iter().map(|(k, v)| (k.to_string(), smooth(v, (v.len() / 50).clamp(1, 50)))).collect();
        let series: Vec<Series> = smoothed.iter().map(|(k, v)| Series { name: k, points: v }).collect();
        gradekit::report::write_atomic(
            &self.root.join("losses.svg"),
            line_chart(&format!("{title}: losses (smoothed)"), "step", &series).as_bytes(),
        )?;
        if !metrics.is_empty() {
            let series: Vec<Series> = metrics.iter().map(|(k, v)| Series { name: k, points: v }).collect();
            gradekit::report::write_atomic(
                &self.root.join("metrics.svg"),
                line_chart(&format!("{title}: accuracy"), "step", &series).as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// Metadata common to every checkpoint.
pub fn meta(kind: &str, step: i64, seed: u64, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        ("kind".to_string(), kind.to_string()),
        ("step".to_string(), step.to_string()),
        ("seed".to_string(), seed.to_string()),
        ("producer".to_string(), format!("gradekit-train {}", env!("CARGO_PKG_VERSION"))),
    ]);
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}
