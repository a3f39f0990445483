//! Bindings for ZeRO's partitioned optimizer (crates/core/src/dist/zero.rs): it works on the
//! engine optimizer that `optim.*` built, which keeps the hyperparameters.

use accelerate_core::dist::{ZeroOptimizer, ZeroStage};
use accelerate_core::optim::AmpInputs;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, wrap_all};
use crate::optim::OptimizerCore;
use crate::zero3::HeldBytes;
use crate::Tensor;

#[napi]
pub struct ZeroCore {
    inner: ZeroOptimizer,
}

#[napi]
impl ZeroCore {
    /// Partitions `optimizer`'s parameters across the process group (`stage` 1 or 2); `offload`
    /// keeps the partitions' master copies and state on the host.
    #[napi(constructor)]
    pub fn new(optimizer: &OptimizerCore, stage: u32, offload: bool) -> Result<Self> {
        guarded("prepare", || {
            let stage = ZeroStage::parse("prepare", stage)?;
            Ok(ZeroCore {
                inner: ZeroOptimizer::new(&optimizer.inner, stage, offload)?,
            })
        })
    }

    #[napi(getter)]
    pub fn stage(&self) -> u32 {
        self.inner.stage() as u32
    }

    /// Stage 2, after a synchronising backward: gradients into this process's partitions.
    #[napi]
    pub fn reduce_gradients(&mut self) -> Result<()> {
        guarded("backward", || self.inner.reduce_gradients())
    }

    #[napi]
    pub fn clip_grad_norm(&mut self, max_norm: f64, norm_type: f64) -> Result<f64> {
        guarded("clipGradNorm", || self.inner.clip_grad_norm(max_norm, norm_type))
    }

    #[napi]
    pub fn step(&mut self, optimizer: &OptimizerCore) -> Result<()> {
        guarded("step", || self.inner.step(&optimizer.inner, AmpInputs::default()))
    }

    #[napi]
    pub fn consolidate_state(&self, optimizer: &mut OptimizerCore) -> Result<()> {
        guarded("stateDict", || self.inner.consolidate_state(&mut optimizer.inner))
    }

    #[napi]
    pub fn release_state(&self, optimizer: &mut OptimizerCore) {
        self.inner.release_state(&mut optimizer.inner);
    }

    /// Copies the parameters' current values into this process's master partitions.
    #[napi]
    pub fn refresh_masters(&mut self) -> Result<()> {
        guarded("loadState", || self.inner.refresh_masters())
    }

    #[napi]
    pub fn take_state(&mut self, optimizer: &mut OptimizerCore) -> Result<()> {
        guarded("loadStateDict", || self.inner.take_state(&mut optimizer.inner))
    }

    /// Bytes of optimizer state (the partitions' moments and master copies) this process holds.
    #[napi]
    pub fn optimizer_state_bytes(&self) -> HeldBytes {
        self.inner.optimizer_state_bytes().into()
    }

    /// Bytes of partition gradients held now (stage 2, between backward and step).
    #[napi]
    pub fn gradient_bytes(&self) -> HeldBytes {
        self.inner.gradient_bytes().into()
    }

    /// This process's partitions of the averaged gradients (stage 2, between backward and step).
    #[napi]
    pub fn gradients(&self, env: Env) -> Vec<Tensor> {
        wrap_all(&env, self.inner.gradients())
    }
}
