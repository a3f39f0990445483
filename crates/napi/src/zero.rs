//! Bindings for ZeRO stage 1's partitioned optimizer (crates/core/src/dist/zero.rs): it works
//! on the engine optimizer that `optim.*` built, which keeps the hyperparameters.

use accelerate_core::dist::ZeroOptimizer;
use accelerate_core::optim::AmpInputs;
use napi::Result;
use napi_derive::napi;

use crate::convert::guarded;
use crate::optim::OptimizerCore;
use crate::zero3::HeldBytes;

#[napi]
pub struct ZeroCore {
    inner: ZeroOptimizer,
}

#[napi]
impl ZeroCore {
    /// Partitions `optimizer`'s parameters across the process group (stage 1); `offload` keeps
    /// the partitions' master copies and state on the host.
    #[napi(constructor)]
    pub fn new(optimizer: &OptimizerCore, offload: bool) -> Result<Self> {
        guarded("prepare", || {
            Ok(ZeroCore {
                inner: ZeroOptimizer::new(&optimizer.inner, offload)?,
            })
        })
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
}
