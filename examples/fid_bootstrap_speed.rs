//! Time of FID's bootstrap interval at the real size: 1000 generated 2048-d features against
//! reference statistics of 2025 faces (random features here: the cost does not depend on values).
//! `cargo run --release --example fid_bootstrap_speed -- [reps]`
use gradekit::metrics::{fid, fid_bootstrap};
use rand::{Rng, SeedableRng};

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let dim = 2048;
    let r: Vec<f32> = (0..2025 * dim).map(|_| rng.random::<f32>()).collect();
    let g: Vec<f32> = (0..1000 * dim).map(|_| rng.random::<f32>() * 1.1).collect();
    let reference = fid::stats_from_features(&r, 2025, dim)?;
    let t = std::time::Instant::now();
    let exact = fid::frechet_distance(&fid::stats_from_features(&g, 1000, dim)?, &reference)?.value;
    let t_exact = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let b = fid_bootstrap::fid_bootstrap(&g, 1000, dim, &reference, reps, 0, 0.95)?;
    let t_boot = t.elapsed().as_secs_f64();
    println!("exact FID {exact:.6} in {t_exact:.2} s; bootstrap full-sample FID {:.6}; {reps} resamples in {t_boot:.2} s ({:.3} s each incl. setup); interval [{:.4}, {:.4}]",
        b.full, t_boot / reps as f64, b.interval.lo, b.interval.hi);
    Ok(())
}
