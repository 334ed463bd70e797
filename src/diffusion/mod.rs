//! Diffusion sampling in Rust: noise schedules and the DDPM / DDIM samplers with classifier-free
//! guidance, driven by a noise model that meets the contract (graders/CONTRACT.md, kind `noise`).

pub mod sampler;
pub mod schedule;

#[cfg(test)]
mod tests;

pub use sampler::{
    sample, sample_from, timesteps, to_u8, Control, Frame, NoiseModel, SampleConfig, SampleOutcome, SamplerKind, Snapshots, StepEvent,
};
pub use schedule::Schedule;
