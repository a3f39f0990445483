//! Bindings for ZeRO stage 3 (crates/core/src/dist/zero3.rs): the sharder of one model's
//! parameters, which the strategy drives around each module's forward, and the optimizer
//! over its shards.

use std::rc::Rc;

use accelerate_core::dist::{Placement, Sharder, Zero3Optimizer};
use accelerate_core::optim::AmpInputs;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, wrap_all};
use crate::optim::OptimizerCore;
use crate::Tensor;

/// Bytes on the device and on the host.
#[napi(object)]
pub struct HeldBytes {
    pub device: f64,
    pub host: f64,
}

impl From<Placement> for HeldBytes {
    fn from(p: Placement) -> Self {
        HeldBytes {
            device: p.device as f64,
            host: p.host as f64,
        }
    }
}

fn indices(idx: &[u32]) -> Vec<usize> {
    idx.iter().map(|&i| i as usize).collect()
}

#[napi]
pub struct Zero3Sharder {
    inner: Rc<Sharder>,
}

#[napi]
impl Zero3Sharder {
    /// Shards `params` across the process group; `units` lists each module's parameter indices.
    #[napi(constructor)]
    pub fn new(
        params: Vec<Tensor>,
        units: Vec<Vec<u32>>,
        persist_below: f64,
        prefetch_bytes: f64,
        offload: bool,
    ) -> Result<Self> {
        guarded("prepare", || {
            let params = params
                .iter()
                .map(|p| Ok(p.handle.get("prepare")?.shallow_clone()))
                .collect::<accelerate_core::Result<Vec<_>>>()?;
            let units: Vec<Vec<usize>> = units.iter().map(|u| indices(u)).collect();
            Ok(Zero3Sharder {
                inner: Rc::new(Sharder::new(
                    &params,
                    &units,
                    persist_below as i64,
                    prefetch_bytes as i64,
                    offload,
                )?),
            })
        })
    }

    /// Gathers `unit` for its module's forward and prefetches the units that follow it.
    #[napi]
    pub fn gather_unit(&self, unit: u32) -> Result<()> {
        guarded("forward (ZeRO stage 3)", || {
            self.inner.gather_unit("forward (ZeRO stage 3)", unit as usize)
        })
    }

    /// How many unit gathers found their unit prefetched.
    #[napi(getter)]
    pub fn prefetch_hits(&self) -> f64 {
        self.inner.prefetch_hits() as f64
    }

    #[napi]
    pub fn gather(&self, idx: Vec<u32>) -> Result<()> {
        guarded("forward (ZeRO stage 3)", || {
            self.inner.gather("forward (ZeRO stage 3)", &indices(&idx))
        })
    }

    #[napi]
    pub fn release(&self, idx: Vec<u32>) -> Result<()> {
        guarded("forward (ZeRO stage 3)", || {
            self.inner.release("forward (ZeRO stage 3)", &indices(&idx))
        })
    }

    #[napi]
    pub fn add_to_unit(&self, unit: u32, idx: Vec<u32>) -> Result<()> {
        guarded("forward (ZeRO stage 3)", || {
            self.inner
                .add_to_unit("forward (ZeRO stage 3)", unit as usize, &indices(&idx))
        })
    }

    /// Whether `output` shares storage with one of `unit`'s parameters.
    #[napi]
    pub fn aliases_unit(&self, unit: u32, output: Tensor) -> Result<bool> {
        let op = "forward (ZeRO stage 3)";
        guarded(op, || {
            self.inner.aliases_unit(op, unit as usize, &*output.handle.peek(op)?)
        })
    }

    #[napi]
    pub fn hook_outputs(&self, unit: u32, outputs: Vec<Tensor>) -> Result<()> {
        let op = "forward (ZeRO stage 3)";
        guarded(op, || {
            let outputs = outputs
                .iter()
                .map(|t| Ok(t.handle.get(op)?.shallow_clone()))
                .collect::<accelerate_core::Result<Vec<_>>>()?;
            self.inner
                .hook_outputs(op, unit as usize, &outputs.iter().collect::<Vec<_>>())
        })
    }

    #[napi]
    pub fn settle(&self) -> Result<()> {
        guarded("backward (ZeRO stage 3)", || {
            self.inner.settle("backward (ZeRO stage 3)")
        })
    }

    /// Drops the shard gradients of the parameters `idx` (zeroGrad; a step skipped for inf/NaN leaves them).
    #[napi]
    pub fn clear_gradients(&self, idx: Vec<u32>) -> Result<()> {
        guarded("zeroGrad (ZeRO)", || {
            self.inner.clear_grads("zeroGrad (ZeRO)", &indices(&idx))
        })
    }

    /// The shard gradients of the parameters `idx` that have one (after backward settled).
    #[napi]
    pub fn gradients(&self, env: Env, idx: Vec<u32>) -> Result<Vec<Tensor>> {
        guarded("gradients (ZeRO)", || {
            Ok(wrap_all(
                &env,
                self.inner.gradients("gradients (ZeRO)", &indices(&idx))?,
            ))
        })
    }

    /// Loads parameter `index` from a whole value: this process's shard takes its slice.
    #[napi]
    pub fn load(&self, index: u32, source: Tensor) -> Result<()> {
        let op = "loadStateDict (ZeRO)";
        guarded(op, || self.inner.load(op, index as usize, &*source.handle.get(op)?))
    }

    #[napi]
    pub fn unshard(&self) -> Result<()> {
        guarded("freeMemory (ZeRO stage 3)", || {
            self.inner.unshard("freeMemory (ZeRO stage 3)")
        })
    }

    #[napi]
    pub fn parameter_bytes(&self) -> Result<HeldBytes> {
        guarded("stateBytes", || Ok(self.inner.parameter_bytes("stateBytes")?.into()))
    }

    #[napi]
    pub fn gradient_bytes(&self) -> Result<HeldBytes> {
        guarded("stateBytes", || Ok(self.inner.gradient_bytes("stateBytes")?.into()))
    }
}

#[napi]
pub struct Zero3Core {
    inner: Zero3Optimizer,
}

#[napi]
impl Zero3Core {
    /// Updates `optimizer`'s parameters through the shards of `sharder`; `offload` on the host.
    #[napi(constructor)]
    pub fn new(optimizer: &OptimizerCore, sharder: &Zero3Sharder, offload: bool) -> Result<Self> {
        guarded("prepare", || {
            Ok(Zero3Core {
                inner: Zero3Optimizer::new(&optimizer.inner, Rc::clone(&sharder.inner), offload)?,
            })
        })
    }

    /// The sharder's indices of this optimizer's parameters.
    #[napi(getter)]
    pub fn indices(&self) -> Vec<u32> {
        self.inner.indices().into_iter().map(|i| i as u32).collect()
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

    #[napi]
    pub fn take_state(&mut self, optimizer: &mut OptimizerCore) -> Result<()> {
        guarded("loadStateDict", || self.inner.take_state(&mut optimizer.inner))
    }

    #[napi]
    pub fn refresh_masters(&mut self) -> Result<()> {
        guarded("loadState", || self.inner.refresh_masters())
    }

    #[napi]
    pub fn state_bytes(&self) -> HeldBytes {
        self.inner.state_bytes().into()
    }
}

/// The total norm across processes of gradient shards (each process passes its own), clipped
/// to `max_norm` in place; returns the norm before.
#[napi]
pub fn dist_clip_sharded_grad_norm(grads: Vec<Tensor>, max_norm: f64, norm_type: f64) -> Result<f64> {
    guarded("clipGradNorm (ZeRO)", || {
        let grads = grads
            .iter()
            .map(|t| Ok(t.handle.get("clipGradNorm")?.shallow_clone()))
            .collect::<accelerate_core::Result<Vec<_>>>()?;
        accelerate_core::dist::clip_sharded_grad_norm("clipGradNorm (ZeRO)", &grads, max_norm, norm_type)
    })
}
