//! `train classifier` (the course's LeNet on a digit set) and `train dann` (MNIST-M -> SVHN / USPS,
//! modes source-only, dann, target-only). DANN as the reference implementation: loss = source label
//! NLL + source domain NLL + target domain NLL, gradient reversal weight 2 / (1 + exp(-10 p)) - 1 with
//! p the training progress, Adam (1e-3) with MultiStepLR (x0.1 at 50% and 75% of the steps).
//! Accuracy on the validation splits is logged during training and written to `results.json`.

use anyhow::Result;
use gradekit::nn::{dann, lenet};
use tch::{Device, Kind, Tensor};

use crate::data::{colour_augment, digit_split, zoom_augment, Batches, ImageSet};
use crate::optim::Adam;
use crate::run::{meta, RunDir};
use crate::tch_ops::{Init, ParamStore, TchOps, Tt};
use crate::{ckpt, Common};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    SourceOnly,
    Dann,
    TargetOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pair {
    MnistmSvhn,
    MnistmUsps,
}

impl Pair {
    pub fn target(self) -> &'static str {
        match self {
            Pair::MnistmSvhn => "svhn",
            Pair::MnistmUsps => "usps",
        }
    }
}

enum Net {
    Lenet,
    Dann,
}

/// Label scores (log-probabilities for DANN, logits for LeNet).
fn classify(p: &mut ParamStore, net: &Net, x: &Tensor, train: bool) -> Result<Tensor> {
    let mut o = TchOps::new(p, train);
    let x = Tt(x.shallow_clone());
    Ok(match net {
        Net::Lenet => lenet::lenet(&mut o, &x)?.0,
        Net::Dann => {
            let f = dann::features(&mut o, &x)?;
            dann::label_head(&mut o, &f)?.0
        }
    })
}

/// Domain log-probabilities (creates the domain head's parameters).
fn domain(p: &mut ParamStore, x: &Tensor) -> Result<Tensor> {
    let mut o = TchOps::new(p, false);
    let f = dann::features(&mut o, &Tt(x.shallow_clone()))?;
    Ok(dann::domain_head(&mut o, &f)?.0)
}

/// Accuracy on a labelled set, evaluated in chunks in inference mode.
fn accuracy(p: &mut ParamStore, net: &Net, set: &ImageSet) -> Result<f64> {
    tch::no_grad(|| {
        let mut correct = 0i64;
        let labels = set.labels.as_ref().expect("labels");
        for s in (0..set.len as i64).step_by(1000) {
            let idx: Vec<i64> = (s..(s + 1000).min(set.len as i64)).collect();
            let (x, _) = set.batch(&idx);
            let pred = classify(p, net, &x, false)?.argmax(-1, false);
            let y = labels.narrow(0, s, idx.len() as i64);
            correct += i64::try_from(pred.eq_tensor(&y).sum(Kind::Int64))?;
        }
        Ok(correct as f64 / set.len as f64)
    })
}

pub struct DigitArgs {
    pub eval_every: i64,
    pub augment: Augment,
}

/// Training-batch augmentations of `train dann --augment`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augment {
    /// `data::colour_augment` on both domains' batches.
    pub colour: bool,
    /// `data::zoom_augment` on the labelled batches (the target's images are graded as they are).
    pub zoom: bool,
}

impl Augment {
    pub fn from_list(items: &[AugmentKind]) -> Augment {
        Augment { colour: items.contains(&AugmentKind::Colour), zoom: items.contains(&AugmentKind::Zoom) }
    }

    /// As recorded in checkpoints: "none", "colour", "zoom" or "colour,zoom".
    pub fn name(self) -> String {
        let on: Vec<&str> = [(self.colour, "colour"), (self.zoom, "zoom")].iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join(",")
        }
    }

    fn source(self, x: Tensor) -> Tensor {
        let x = if self.zoom { zoom_augment(&x) } else { x };
        if self.colour {
            colour_augment(&x)
        } else {
            x
        }
    }

    fn target(self, x: Tensor) -> Tensor {
        if self.colour {
            colour_augment(&x)
        } else {
            x
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AugmentKind {
    /// Random greyscale and random inversion, both domains.
    Colour,
    /// Random zoom-in crops (scale 1-1.5) of the labelled images.
    Zoom,
}

/// `samples/augmented.png`: 16 training images per row pair, as loaded and as one augmented batch
/// sees them (source rows first, then target rows), so a recipe's augmentation can be looked at.
fn augmentation_picture(run: &RunDir, aug: Augment, labelled: &ImageSet, unlabelled: Option<&ImageSet>) -> Result<()> {
    let idx: Vec<i64> = (0..16.min(labelled.len as i64)).collect();
    let (x, _) = labelled.batch(&idx);
    let mut rows = vec![x.shallow_clone(), aug.source(x)];
    if let Some(u) = unlabelled {
        let (xt, _) = u.batch(&(0..16.min(u.len as i64)).collect::<Vec<_>>());
        rows.push(xt.shallow_clone());
        rows.push(aug.target(xt));
    }
    let cols = idx.len();
    crate::pictures_from(&Tensor::cat(&rows, 0), cols)?.save(run.root.join("samples").join("augmented.png"))?;
    Ok(())
}

pub fn train_classifier(c: &Common, a: &DigitArgs) -> Result<()> {
    let dev = c.start()?;
    let dir = c.data_dir("data/hw2_data/digits/mnistm");
    let train = digit_split(&dir, "train", c.limit, dev)?;
    let val = digit_split(&dir, "val", None, dev)?;
    let results = fit(c, a, "classifier", Net::Lenet, Some(&train), None, &[("val_acc", &val)], Mode::SourceOnly, dev)?;
    eprintln!("classifier: validation accuracy {:.4} ({})", results[0].1, val.origin);
    Ok(())
}

pub fn train_dann(c: &Common, a: &DigitArgs, pair: Pair, mode: Mode) -> Result<()> {
    let dev = c.start()?;
    let root = c.data_dir("data/hw2_data/digits");
    let tgt_dir = root.join(pair.target());
    let src_dir = root.join("mnistm");
    let need_src = mode != Mode::TargetOnly;
    let need_tgt = mode != Mode::SourceOnly;
    let src = if need_src { Some(digit_split(&src_dir, "train", c.limit, dev)?) } else { None };
    let tgt = if need_tgt { Some(digit_split(&tgt_dir, "train", c.limit, dev)?) } else { None };
    let tgt_val = digit_split(&tgt_dir, "val", None, dev)?;
    let src_val = digit_split(&src_dir, "val", None, dev)?;
    let evals = [("target_val_acc", &tgt_val), ("source_val_acc", &src_val)];
    let (train_set, domain_set) = match mode {
        Mode::SourceOnly => (src.as_ref(), None),
        Mode::TargetOnly => (tgt.as_ref(), None),
        Mode::Dann => (src.as_ref(), tgt.as_ref()),
    };
    let r = fit(c, a, "dann", Net::Dann, train_set, domain_set, &evals, mode, dev)?;
    eprintln!("dann {pair:?} {mode:?}: target val accuracy {:.4}, source val accuracy {:.4}", r[0].1, r[1].1);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fit(
    c: &Common,
    a: &DigitArgs,
    kind: &str,
    net: Net,
    labelled: Option<&ImageSet>,
    unlabelled: Option<&ImageSet>,
    evals: &[(&str, &ImageSet)],
    mode: Mode,
    dev: Device,
) -> Result<Vec<(String, f64)>> {
    let labelled = labelled.expect("a labelled training set");
    tch::manual_seed(c.seed as i64);
    let mut p = ParamStore::new(dev, Init::Torch);
    tch::no_grad(|| -> Result<()> {
        let x = Tensor::zeros([2, 3, 28, 28], (Kind::Float, dev));
        let _ = classify(&mut p, &net, &x, false)?;
        if matches!(net, Net::Dann) {
            let _ = domain(&mut p, &x)?;
        }
        Ok(())
    })?;
    let lr = c.lr.unwrap_or(1e-3);
    let mut opt = Adam::new(p.group(""), lr, (0.9, 0.999), 0.0);
    let steps = c.steps.unwrap_or(5000);
    let batch = c.batch.unwrap_or(128);
    let augment = a.augment.name();
    let (start, _) = c.resume_into(kind, &[("augment", &augment, "none")], &mut p, &mut [("main", &mut opt)])?;
    let mut src_batches = Batches::new(labelled.len, c.seed);
    src_batches.skip(start, batch);
    let mut tgt_batches = unlabelled.map(|u| {
        let mut b = Batches::new(u.len, c.seed.wrapping_add(7));
        b.skip(start, batch);
        b
    });
    let mut run = RunDir::create(&c.out, steps as u64, start as u64, kind)?;
    if a.augment != Augment::default() {
        augmentation_picture(&run, a.augment, labelled, unlabelled)?;
    }
    let mut latest = Vec::new();
    let last = c.last_step(steps);
    let t0 = std::time::Instant::now();
    for step in start..last {
        c.seed_step(step);
        let progress = step as f64 / steps as f64;
        // MultiStepLR: x0.1 at 50% and 75% of the run.
        opt.lr = lr
            * if progress >= 0.75 {
                0.01
            } else if progress >= 0.5 {
                0.1
            } else {
                1.0
            };
        let lambda = 2.0 / (1.0 + (-10.0 * progress).exp()) - 1.0;
        let (x, y) = labelled.batch(&src_batches.next(batch));
        let x = a.augment.source(x);
        let y = y.expect("labels");
        opt.zero_grad(&mut p);
        let target = match (unlabelled, tgt_batches.as_mut()) {
            (Some(u), Some(tb)) => {
                let xt = u.batch(&tb.next(batch)).0;
                Some(a.augment.target(xt))
            }
            _ => None,
        };
        let (scores, domain_loss) = match &target {
            // DANN: one feature pass per domain feeds both heads (the domain head through the GRL).
            Some(xt) => {
                let mut o = TchOps::new(&mut p, true);
                o.grl_lambda = lambda;
                let fs = dann::features(&mut o, &Tt(x.shallow_clone()))?;
                let scores = dann::label_head(&mut o, &fs)?.0;
                let ds = dann::domain_head(&mut o, &fs)?.0;
                let ft = dann::features(&mut o, &Tt(xt.shallow_clone()))?;
                let dt = dann::domain_head(&mut o, &ft)?.0;
                let zeros = Tensor::zeros([ds.size()[0]], (Kind::Int64, dev));
                let ones = Tensor::ones([dt.size()[0]], (Kind::Int64, dev));
                (scores, Some(ds.nll_loss(&zeros) + dt.nll_loss(&ones)))
            }
            None => (classify(&mut p, &net, &x, true)?, None),
        };
        let class_loss = match net {
            Net::Lenet => scores.cross_entropy_for_logits(&y),
            Net::Dann => scores.nll_loss(&y),
        };
        let mut loss = class_loss.shallow_clone();
        let mut dom = 0.0;
        if let Some(dl) = domain_loss {
            dom = f64::try_from(&dl)?;
            loss += dl;
        }
        loss.backward();
        opt.step(&p);
        let cl = f64::try_from(&class_loss)?;
        if !cl.is_finite() {
            anyhow::bail!("step {}: the loss diverged ({cl}); lower --lr", step + 1);
        }
        let mut vals = vec![("label_loss", cl)];
        if unlabelled.is_some() {
            vals.push(("domain_loss", dom));
        }
        run.log(step + 1, &vals);
        run.pb.inc(1);
        let end = step + 1 == last || c.time_up(t0);
        if (step + 1) % a.eval_every == 0 || end {
            latest.clear();
            for (name, set) in evals {
                let acc = accuracy(&mut p, &net, set)?;
                run.log(step + 1, &[(name, acc)]);
                latest.push((name.to_string(), acc));
            }
        }
        if (step + 1) % c.save_every == 0 || end {
            let mut tensors = p.named();
            tensors.extend(opt.state("main"));
            let recipe =
                [("mode", format!("{mode:?}")), ("batch", batch.to_string()), ("lr", lr.to_string()), ("augment", augment.clone())];
            ckpt::save(&run.checkpoint(), tensors, &meta(kind, step + 1, c.seed, &recipe))?;
            run.write_curves(kind)?;
        }
        if end {
            break;
        }
    }
    run.pb.finish();
    let json = serde_json::json!({
        "kind": kind,
        "mode": format!("{mode:?}"),
        "steps": steps,
        "batch": batch,
        "seed": c.seed,
        "augment": augment,
        "accuracy": latest.iter().map(|(k, v)| (k.clone(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "evaluated_on": evals.iter().map(|(k, s)| (k.to_string(), s.origin.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    gradekit::report::write_atomic(&run.root.join("results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(latest)
}
