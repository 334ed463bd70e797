//! The observer (stop, errors, snapshots), bad models and configs, and the image conversion.

use super::*;

// ---------------------------------------------------------------- observer

#[test]
fn observer_stop_returns_stopped_with_steps_done() {
    let s = dome();
    let mut calls = 0;
    let mut last_next = Vec::new();
    let out = sample(&mut Toy, &s, &ddim(0.0, 50), &[3, 4], SMALL, &mut |ev: StepEvent<'_>| {
        calls += 1;
        assert_eq!(ev.step + 1, calls);
        assert_eq!(ev.total_steps, 50);
        last_next = ev.x_next.to_vec();
        Ok(if calls == 5 { Control::Stop } else { Control::Continue })
    })
    .unwrap();
    assert_eq!(calls, 5);
    match out {
        SampleOutcome::Stopped { steps_done, x } => {
            assert_eq!(steps_done, 5);
            assert_eq!(x, last_next);
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    let stopped = sample(&mut Toy, &s, &ddim(0.0, 50), &[3], SMALL, &mut |_| Ok(Control::Stop)).unwrap();
    assert!(stopped.finished().unwrap_err().to_string().contains("stopped after 1 steps"));
}

#[test]
fn stop_on_the_last_step_is_finished() {
    let s = dome();
    let out = sample(&mut Toy, &s, &ddim(0.0, 1), &[3], SMALL, &mut |_| Ok(Control::Stop)).unwrap();
    assert!(matches!(out, SampleOutcome::Finished(_)));
}

#[test]
fn observer_errors_propagate_with_the_step() {
    let s = dome();
    let mut n = 0;
    let err = sample(&mut Toy, &s, &ddim(0.0, 10), &[3], SMALL, &mut |_| {
        n += 1;
        if n == 2 {
            anyhow::bail!("disk full")
        } else {
            Ok(Control::Continue)
        }
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("step 2 of 10 (t=888)") && msg.contains("disk full"), "{msg}");
}

#[test]
fn ddpm_snapshots_hit_the_requested_times() {
    let s = dome();
    let wanted = [999, 800, 600, 400, 200, 0];
    let mut snaps = Snapshots::new(&wanted);
    let mut first_x = Vec::new();
    let out = sample(&mut Toy, &s, &cfg(SamplerKind::Ddpm, 999), &[5], SMALL, &mut |ev: StepEvent<'_>| {
        if ev.step == 0 {
            first_x = ev.x_t.to_vec();
        }
        snaps.observe(&ev);
        Ok(Control::Continue)
    })
    .unwrap()
    .finished()
    .unwrap();
    let frames = snaps.frames();
    assert_eq!(frames.iter().map(|f| f.t).collect::<Vec<_>>(), wanted);
    assert_eq!(frames.iter().map(|f| f.wanted).collect::<Vec<_>>(), wanted);
    assert_eq!(frames[0].x, first_x, "t=999 is the initial noise");
    let clamped: Vec<f32> = frames[5].x.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    assert_eq!(clamped, out, "t=0 is the final image before clamping");
    assert!(max_abs_diff(&frames[1].x, &frames[2].x) > 0.0);
}

#[test]
fn ddim_snapshots_take_the_closest_visited_time_below() {
    let s = dome();
    let wanted = [999, 800, 600, 400, 200, 0];
    let mut snaps = Snapshots::new(&wanted);
    sample(&mut Toy, &s, &ddim(0.0, 10), &[5], SMALL, &mut |ev: StepEvent<'_>| {
        snaps.observe(&ev);
        Ok(Control::Continue)
    })
    .unwrap();
    // Visited: 999, 888, 777, 666, 555, 445, 334, 223, 112, 1, then 0 (final).
    let got: Vec<usize> = snaps.frames().iter().map(|f| f.t).collect();
    assert_eq!(got, vec![999, 777, 555, 334, 112, 0]);
}

// ---------------------------------------------------------------- bad models and inputs

struct Faulty {
    calls: usize,
    bad_call: usize,
    value: f32,
    short: bool,
}

impl NoiseModel for Faulty {
    fn predict(&mut self, x: &[f32], _: [usize; 4], _: &[i64], _: &[i64]) -> Result<Vec<f32>> {
        self.calls += 1;
        let mut out = vec![0.0; x.len()];
        if self.calls == self.bad_call {
            if self.short {
                out.pop();
            } else {
                out[200] = self.value;
            }
        }
        Ok(out)
    }
}

#[test]
fn nan_from_model_is_an_error_naming_the_step() {
    let s = dome();
    for value in [f32::NAN, f32::INFINITY] {
        let mut m = Faulty { calls: 0, bad_call: 3, value, short: false };
        let err = sample(&mut m, &s, &cfg(SamplerKind::Ddpm, 999), &[1, 6], SMALL, &mut keep_going).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("step 3 of 999 (t=997)"), "{msg}");
        assert!(msg.contains(&value.to_string()), "{msg}");
        assert!(msg.contains("batch item 1 (label 6), element 8"), "{msg}");
        assert_eq!(m.calls, 3, "sampling must stop at the bad step");
    }
}

#[test]
fn wrong_output_length_is_an_error() {
    let s = dome();
    let mut m = Faulty { calls: 0, bad_call: 1, value: 0.0, short: true };
    let msg = format!("{:#}", sample(&mut m, &s, &ddim(0.0, 5), &[1], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("returned 191 values, expected 192"), "{msg}");
}

#[test]
fn model_errors_carry_the_step() {
    struct Broken;
    impl NoiseModel for Broken {
        fn predict(&mut self, _: &[f32], _: [usize; 4], _: &[i64], _: &[i64]) -> Result<Vec<f32>> {
            anyhow::bail!("onnx session exploded")
        }
    }
    let s = dome();
    let msg = format!("{:#}", sample(&mut Broken, &s, &ddim(0.0, 5), &[1], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("step 1 of 5 (t=999)") && msg.contains("onnx session exploded"), "{msg}");
}

#[test]
fn huge_model_output_that_overflows_x_is_an_error() {
    let s = dome();
    let mut m = Faulty { calls: 0, bad_call: 1, value: f32::MAX, short: false };
    let msg = format!("{:#}", sample(&mut m, &s, &ddim(0.0, 5), &[1, 2], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("non-finite x"), "{msg}");
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let s = dome();
    let bad =
        |c: SampleConfig, labels: &[i64], chw: [usize; 3]| sample(&mut Toy, &s, &c, labels, chw, &mut keep_going).unwrap_err().to_string();
    assert!(bad(ddim(0.0, 5), &[], SMALL).contains("no labels"));
    assert!(bad(ddim(0.0, 5), &[1], [3, 0, 28]).contains("shape"));
    assert!(bad(ddim(0.0, 5), &[1], [usize::MAX, 2, 2]).contains("shape"));
    assert!(bad(ddim(1.5, 5), &[1], SMALL).contains("eta"));
    assert!(bad(ddim(f64::NAN, 5), &[1], SMALL).contains("eta"));
    assert!(bad(SampleConfig { guidance: f64::NAN, ..ddim(0.0, 5) }, &[1], SMALL).contains("guidance"));
    assert!(bad(cfg(SamplerKind::Ddpm, 50), &[1], SMALL).contains("steps must be T-1"));
    assert!(bad(ddim(0.0, 1000), &[1], SMALL).contains("1..=999"));
    assert!(bad(SampleConfig { first_image: u64::MAX, ..ddim(0.0, 5) }, &[1], SMALL).contains("overflows"));
}

// ---------------------------------------------------------------- to_u8

#[test]
fn to_u8_matches_torch_truncation() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(0.0), 127); // 127.5 truncates
    assert_eq!(to_u8(-5.0), 0);
    assert_eq!(to_u8(5.0), 255);
    assert_eq!(to_u8(f32::NAN), 0);
    // 2 * 200.9 / 255 - 1 sits between 200 and 201 after scaling.
    assert_eq!(to_u8(2.0 * 200.9 / 255.0 - 1.0), 200);
    assert_eq!(to_u8(0.999), 254); // 254.87
    let mut prev = 0;
    for i in 0..=2000 {
        let v = to_u8(-1.0 + i as f32 / 1000.0);
        assert!(v >= prev);
        prev = v;
    }
}
