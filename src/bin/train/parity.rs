//! `train parity KIND --out DIR`: seeded weights of an architecture and its tch outputs on seeded
//! inputs, written as safetensors, so a test can export the weights and compare tract and ONNX
//! Runtime against libtorch (tests/train_parity.rs). All 1-D tensors (norm affines, biases, running
//! statistics) are randomised, so a swapped or ignored parameter shows in the outputs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use gradekit::nn::{dann, dcgan, lenet, unet};
use tch::{Device, Kind, Tensor};

use crate::ckpt;
use crate::tch_ops::{Init, ParamStore, TchOps, Tt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ParityKind {
    Classifier,
    Dann,
    Generator,
    Discriminator,
    Critic,
    Unet,
}

fn forward(p: &mut ParamStore, kind: ParityKind, width: usize, x: &Tensor, t: &Tensor, l: &Tensor) -> Result<Tensor> {
    let mut o = TchOps::new(p, false);
    let x = Tt(x.shallow_clone());
    Ok(match kind {
        ParityKind::Classifier => lenet::lenet(&mut o, &x)?.0,
        ParityKind::Dann => {
            let f = dann::features(&mut o, &x)?;
            // The domain head's parameters exist too, as in a trained checkpoint.
            dann::domain_head(&mut o, &f)?;
            dann::label_head(&mut o, &f)?.0
        }
        ParityKind::Generator => dcgan::generator(&mut o, &x, width)?.0,
        ParityKind::Discriminator => dcgan::discriminator(&mut o, &x, width, false)?.0,
        ParityKind::Critic => dcgan::discriminator(&mut o, &x, width, true)?.0,
        ParityKind::Unet => unet::forward(&mut o, &x, &Tt(t.shallow_clone()), &Tt(l.shallow_clone()), width)?.0,
    })
}

fn input(kind: ParityKind, n: i64) -> (Tensor, Tensor, Tensor) {
    let x = match kind {
        ParityKind::Generator => Tensor::randn([n, dcgan::LATENT as i64, 1, 1], (Kind::Float, Device::Cpu)),
        ParityKind::Discriminator | ParityKind::Critic => Tensor::rand([n, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        _ => Tensor::rand([n, 3, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
    };
    // Mixed timesteps (including both ends) and labels (including the null label).
    let t = Tensor::randint_low(1, 1000, [n], (Kind::Int64, Device::Cpu));
    let l = Tensor::randint(unet::NUM_CLASSES as i64 + 1, [n], (Kind::Int64, Device::Cpu));
    if n >= 3 {
        let _ = t.get(0).fill_(1);
        let _ = t.get(1).fill_(999);
        let _ = l.get(2).fill_(unet::NUM_CLASSES as i64);
    }
    (x, t, l)
}

pub fn run(kind: ParityKind, width: usize, batches: &[i64], seed: u64, out: &Path) -> Result<()> {
    tch::manual_seed(seed as i64);
    std::fs::create_dir_all(out)?;
    let mut p = ParamStore::new(Device::Cpu, Init::Torch);
    let (x, t, l) = input(kind, 2);
    let _ = tch::no_grad(|| forward(&mut p, kind, width, &x, &t, &l))?;
    tch::no_grad(|| {
        for (k, v) in p.vars.iter_mut() {
            if v.dim() == 1 {
                let r = if k.ends_with("running_var") { Tensor::rand_like(v) + 0.5 } else { &*v + Tensor::randn_like(v) * 0.1 };
                v.copy_(&r);
            }
        }
    });
    let tensors = p.named();
    let meta = BTreeMap::from([("kind".to_string(), format!("{kind:?}").to_lowercase()), ("width".to_string(), width.to_string())]);
    ckpt::save(&out.join("weights.safetensors"), tensors, &meta)?;
    let mut io = Vec::new();
    for &n in batches {
        let (x, t, l) = input(kind, n);
        let y = tch::no_grad(|| forward(&mut p, kind, width, &x, &t, &l))?;
        io.push((format!("b{n}.x"), x));
        io.push((format!("b{n}.t"), t.to_kind(Kind::Float)));
        io.push((format!("b{n}.label"), l.to_kind(Kind::Float)));
        io.push((format!("b{n}.out"), y));
    }
    ckpt::save(&out.join("io.safetensors"), io, &BTreeMap::new())?;
    Ok(())
}
