//! Adam and AdamW written on tensors so their state (step, first and second moments) goes into the
//! checkpoint and a resumed run continues exactly where it stopped. Same update as `torch.optim`.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::tch_ops::ParamStore;

pub struct Adam {
    pub names: Vec<String>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay (AdamW) when > 0.
    pub weight_decay: f64,
    pub step: i64,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
}

impl Adam {
    pub fn new(names: Vec<String>, lr: f64, betas: (f64, f64), weight_decay: f64) -> Adam {
        Adam { names, lr, betas, eps: 1e-8, weight_decay, step: 0, m: BTreeMap::new(), v: BTreeMap::new() }
    }

    pub fn zero_grad(&self, p: &mut ParamStore) {
        for n in &self.names {
            if let Some(t) = p.vars.get_mut(n) {
                t.zero_grad();
            }
        }
    }

    pub fn step(&mut self, p: &ParamStore) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for n in &self.names {
                let Some(w) = p.vars.get(n) else { continue };
                let g = w.grad();
                if !g.defined() {
                    continue;
                }
                let m = self.m.entry(n.clone()).or_insert_with(|| w.zeros_like());
                let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let v = self.v.entry(n.clone()).or_insert_with(|| w.zeros_like());
                let _ = v.g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
                let mut w = w.shallow_clone();
                if self.weight_decay > 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
                }
                let denom = (&*v / bc2).sqrt() + self.eps;
                let _ = w.g_sub_(&((&*m / denom) * (self.lr / bc1)));
            }
        });
    }

    /// (name, tensor) pairs to checkpoint, under `optim.<tag>.m.` / `.v.`.
    pub fn state(&self, tag: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (k, t) in &self.m {
            out.push((format!("optim.{tag}.m.{k}"), t.shallow_clone()));
        }
        for (k, t) in &self.v {
            out.push((format!("optim.{tag}.v.{k}"), t.shallow_clone()));
        }
        out.push((format!("optim.{tag}.step"), Tensor::from_slice(&[self.step as f32])));
        out
    }

    pub fn load_state(&mut self, tag: &str, tensors: &BTreeMap<String, Tensor>) {
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix(&format!("optim.{tag}.m.")) {
                self.m.insert(n.to_string(), t.shallow_clone());
            } else if let Some(n) = k.strip_prefix(&format!("optim.{tag}.v.")) {
                self.v.insert(n.to_string(), t.shallow_clone());
            }
        }
        if let Some(s) = tensors.get(&format!("optim.{tag}.step")) {
            self.step = f64::try_from(s.sum(tch::Kind::Float)).unwrap_or(0.0) as i64;
        }
    }
}

/// Exponential moving average of parameters and buffers (dome272's EMA: a plain copy until
/// `start`, then `ema = beta ema + (1 - beta) w`).
pub struct Ema {
    pub beta: f64,
    pub start: i64,
    pub shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    pub fn new(beta: f64, start: i64) -> Ema {
        Ema { beta, start, shadow: BTreeMap::new() }
    }

    pub fn update(&mut self, p: &ParamStore, step: i64) {
        tch::no_grad(|| {
            for (k, w) in &p.vars {
                let w = w.detach();
                match self.shadow.get_mut(k) {
                    Some(s) if step >= self.start => {
                        let _ = s.g_mul_scalar_(self.beta).g_add_(&(&w * (1.0 - self.beta)));
                    }
                    Some(s) => s.copy_(&w),
                    None => {
                        self.shadow.insert(k.clone(), w.copy());
                    }
                }
            }
        });
    }
}
