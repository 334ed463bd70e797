//! `train dcgan` and `train wgan-gp` on a face folder (64x64 RGB).
//! DCGAN: BCE, Adam 2e-4, betas (0.5, 0.999), N(0, 0.02) init, one D step per G step.
//! WGAN-GP: critic loss D(fake) - D(real) + 10 GP, 5 critic steps per G step, Adam 1e-4, betas (0, 0.9).

use anyhow::Result;
use gradekit::nn::dcgan;
use tch::{Kind, Reduction, Tensor};

use crate::data::{image_folder, Batches};
use crate::optim::Adam;
use crate::run::{meta, RunDir};
use crate::tch_ops::{Init, ParamStore, TchOps, Tt};
use crate::{ckpt, pictures_from, Common};

pub struct GanArgs {
    pub width: usize,
    pub wgan: bool,
    pub critic_steps: usize,
    pub gp_lambda: f64,
}

pub fn generate(p: &mut ParamStore, z: &Tensor, width: usize, train: bool) -> Result<Tensor> {
    p.prefix = "generator.".into();
    let y = {
        let mut o = TchOps::new(p, train);
        dcgan::generator(&mut o, &Tt(z.shallow_clone()), width)
    };
    p.prefix.clear();
    Ok(y?.0)
}

pub fn discriminate(p: &mut ParamStore, x: &Tensor, width: usize, critic: bool, train: bool) -> Result<Tensor> {
    p.prefix = "discriminator.".into();
    let y = {
        let mut o = TchOps::new(p, train);
        dcgan::discriminator(&mut o, &Tt(x.shallow_clone()), width, critic)
    };
    p.prefix.clear();
    Ok(y?.0)
}

pub fn train(c: &Common, g: &GanArgs) -> Result<()> {
    let kind = if g.wgan { "wgan-gp" } else { "dcgan" };
    let dev = c.start()?;
    tch::manual_seed(c.seed as i64);
    let data = image_folder(&c.data_dir("data/hw2_data/face/train"), 64, c.limit, dev)?;
    let mut p = ParamStore::new(dev, Init::Dcgan);
    tch::no_grad(|| -> Result<()> {
        let z = Tensor::zeros([2, dcgan::LATENT as i64, 1, 1], (Kind::Float, dev));
        let x = generate(&mut p, &z, g.width, false)?;
        let _ = discriminate(&mut p, &x, g.width, g.wgan, false)?;
        Ok(())
    })?;
    let (lr, betas) = if g.wgan { (1e-4, (0.0, 0.9)) } else { (2e-4, (0.5, 0.999)) };
    let lr = c.lr.unwrap_or(lr);
    let mut opt_g = Adam::new(p.group("generator."), lr, betas, 0.0);
    let mut opt_d = Adam::new(p.group("discriminator."), lr, betas, 0.0);
    let steps = c.steps.unwrap_or(if g.wgan { 20_000 } else { 10_000 });
    let batch = c.batch.unwrap_or(if g.wgan { 64 } else { 128 });
    let (start, _) = c.resume_into(kind, &[], &mut p, &mut [("g", &mut opt_g), ("d", &mut opt_d)])?;
    let inner = if g.wgan { g.critic_steps } else { 1 };
    let mut batches = Batches::new(data.len, c.seed);
    batches.skip(start * inner as i64, batch);
    let fixed_z = Tensor::randn([64, dcgan::LATENT as i64, 1, 1], (Kind::Float, dev));
    let mut run = RunDir::create(&c.out, steps as u64, start as u64, kind)?;
    let save = |p: &mut ParamStore, opt_g: &Adam, opt_d: &Adam, run: &RunDir, step: i64| -> Result<()> {
        let mut t = p.named();
        t.extend(opt_g.state("g"));
        t.extend(opt_d.state("d"));
        ckpt::save(
            &run.checkpoint(),
            t,
            &meta(kind, step, c.seed, &[("width", g.width.to_string()), ("batch", batch.to_string()), ("lr", lr.to_string())]),
        )?;
        let img = tch::no_grad(|| generate(p, &fixed_z, g.width, false))?;
        let grid = pictures_from(&img, 8)?;
        grid.save(run.root.join("samples").join(format!("step_{step:07}.png")))?;
        grid.save(run.root.join("samples.png"))?;
        run.write_curves(kind)
    };
    let last = c.last_step(steps);
    let t0 = std::time::Instant::now();
    let mut done = start;
    for step in start..last {
        c.seed_step(step);
        let n = batch.min(data.len) as i64;
        let mut d_loss = 0.0;
        let mut gp_val = 0.0;
        for _ in 0..inner {
            let (x, _) = data.batch(&batches.next(batch));
            let n = x.size()[0];
            let z = Tensor::randn([n, dcgan::LATENT as i64, 1, 1], (Kind::Float, dev));
            let fake = generate(&mut p, &z, g.width, true)?.detach();
            opt_d.zero_grad(&mut p);
            let loss = if g.wgan {
                let eps = Tensor::rand([n, 1, 1, 1], (Kind::Float, dev));
                let xh = (&x * &eps + &fake * (-&eps + 1.0)).set_requires_grad(true);
                let c_hat = discriminate(&mut p, &xh, g.width, true, true)?;
                let grads = Tensor::run_backward(&[c_hat.sum(Kind::Float)], &[&xh], true, true);
                let gp = (grads[0].flatten(1, -1).norm_scalaropt_dim(2, [1], false) - 1.0).square().mean(Kind::Float);
                gp_val = f64::try_from(&gp)?;
                let real = discriminate(&mut p, &x, g.width, true, true)?.mean(Kind::Float);
                let fk = discriminate(&mut p, &fake, g.width, true, true)?.mean(Kind::Float);
                fk - real + gp * g.gp_lambda
            } else {
                let real = discriminate(&mut p, &x, g.width, false, true)?;
                let fk = discriminate(&mut p, &fake, g.width, false, true)?;
                real.binary_cross_entropy::<Tensor>(&real.ones_like(), None, Reduction::Mean)
                    + fk.binary_cross_entropy::<Tensor>(&fk.zeros_like(), None, Reduction::Mean)
            };
            loss.backward();
            opt_d.step(&p);
            d_loss = f64::try_from(&loss)?;
        }
        opt_g.zero_grad(&mut p);
        let z = Tensor::randn([n, dcgan::LATENT as i64, 1, 1], (Kind::Float, dev));
        let fake = generate(&mut p, &z, g.width, true)?;
        let score = discriminate(&mut p, &fake, g.width, g.wgan, true)?;
        let g_loss =
            if g.wgan { -score.mean(Kind::Float) } else { score.binary_cross_entropy::<Tensor>(&score.ones_like(), None, Reduction::Mean) };
        g_loss.backward();
        opt_g.step(&p);
        let gl = f64::try_from(&g_loss)?;
        if !gl.is_finite() || !d_loss.is_finite() {
            anyhow::bail!("step {}: the losses diverged (D {d_loss}, G {gl}); lower --lr or resume from the last checkpoint", step + 1);
        }
        let mut vals = vec![("loss_d", d_loss), ("loss_g", gl)];
        if g.wgan {
            vals.push(("gp", gp_val));
        }
        run.log(step + 1, &vals);
        run.pb.inc(1);
        done = step + 1;
        let time_up = c.time_up(t0);
        if (step + 1) % c.save_every == 0 || step + 1 == last || time_up {
            save(&mut p, &opt_g, &opt_d, &run, step + 1)?;
        }
        if time_up {
            eprintln!("--max-time reached after step {}; --resume continues", step + 1);
            break;
        }
    }
    run.pb.finish();
    eprintln!(
        "{kind}: step {done} of {steps}; checkpoint {}, samples in {}",
        run.checkpoint().display(),
        run.root.join("samples").display()
    );
    Ok(())
}
