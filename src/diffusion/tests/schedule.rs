//! The noise schedule and the timesteps each sampler visits.

use super::*;

// ---------------------------------------------------------------- schedule

#[test]
fn linear_schedule_matches_numpy_reference() {
    let s = dome();
    assert_eq!(s.len(), 1000);
    assert_eq!(s.betas()[0], 1e-4);
    assert_eq!(s.betas()[999], 0.02);
    // Reference values from numpy: np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)).
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 + 1e-9 * b.abs();
    assert!(close(s.betas()[1], 1.1991991991991993e-4));
    assert!(close(s.alpha_bars()[0], 0.9999));
    assert!(close(s.alpha_bars()[1], 0.9997800920720721));
    assert!(close(s.alpha_bars()[499], 0.07858724288177824));
    assert!(close(s.alpha_bars()[999], 4.035829765375676e-05), "{}", s.alpha_bars()[999]);
    assert!(close(s.alphas()[999], 0.98));
}

#[test]
fn from_betas_builds_cumulative_products() {
    let s = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    let want = [0.9, 0.72, 0.504];
    for (got, want) in s.alpha_bars().iter().zip(want) {
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }
}

#[test]
fn invalid_schedules_are_errors() {
    let bad = [
        Schedule::new("linear", 1e-4, 0.02, 1),
        Schedule::new("linear", 0.0, 0.02, 10),
        Schedule::new("linear", 1e-4, 1.0, 10),
        Schedule::new("linear", f64::NAN, 0.02, 10),
        Schedule::new("cosine", 1e-4, 0.02, 10),
        Schedule::from_betas(vec![0.1]),
        Schedule::from_betas(vec![0.1, -0.2]),
        Schedule::from_betas(vec![0.1, f64::INFINITY]),
        Schedule::from_betas(vec![0.999_999; 100_000]), // alpha_bar underflows to 0
    ];
    for (i, r) in bad.into_iter().enumerate() {
        assert!(r.is_err(), "case {i} should be rejected");
    }
    let msg = Schedule::from_betas(vec![0.1, 1.5]).unwrap_err().to_string();
    assert!(msg.contains("betas[1]"), "{msg}");
}

// ---------------------------------------------------------------- timesteps

#[test]
fn ddpm_timesteps_visit_every_step() {
    let ts = timesteps(SamplerKind::Ddpm, 999, 1000).unwrap();
    assert_eq!(ts.len(), 999);
    assert_eq!((ts[0], ts[998]), (999, 1));
    assert!(ts.windows(2).all(|w| w[0] == w[1] + 1));
    assert!(timesteps(SamplerKind::Ddpm, 998, 1000).is_err());
    assert!(timesteps(SamplerKind::Ddpm, 1000, 1000).is_err());
    assert_eq!(timesteps(SamplerKind::Ddpm, 1, 2).unwrap(), vec![1]);
}

#[test]
fn ddim_timesteps_are_evenly_spaced_and_distinct() {
    let kind = SamplerKind::Ddim { eta: 0.0 };
    for steps in [2, 3, 10, 50, 333, 998, 999] {
        let ts = timesteps(kind, steps, 1000).unwrap();
        assert_eq!(ts.len(), steps);
        assert_eq!((ts[0], *ts.last().unwrap()), (999, 1), "steps={steps}");
        assert!(ts.windows(2).all(|w| w[0] > w[1]), "steps={steps} not strictly descending");
        // Evenly spaced up to rounding: gaps differ by at most 1.
        let gaps: Vec<usize> = ts.windows(2).map(|w| w[0] - w[1]).collect();
        let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(hi - lo <= 1, "steps={steps} gaps {lo}..{hi}");
    }
    // Same as numpy's floor(linspace(1, T-1, steps) + 0.5), reversed, for every valid count.
    for steps in 2..=999usize {
        let want: Vec<usize> = (0..steps).rev().map(|k| (1.0 + k as f64 * 998.0 / (steps - 1) as f64 + 0.5).floor() as usize).collect();
        assert_eq!(timesteps(kind, steps, 1000).unwrap(), want, "steps={steps}");
    }
    assert_eq!(timesteps(kind, 1, 1000).unwrap(), vec![999]);
    assert_eq!(timesteps(kind, 10, 1000).unwrap(), vec![999, 888, 777, 666, 555, 445, 334, 223, 112, 1]);
    assert_eq!(timesteps(kind, 999, 1000).unwrap(), (1..=999).rev().collect::<Vec<_>>());
    assert!(timesteps(kind, 0, 1000).is_err());
    assert!(timesteps(kind, 1000, 1000).is_err());
    assert!(timesteps(kind, 1, 1).is_err());
}
