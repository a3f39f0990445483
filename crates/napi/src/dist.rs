//! Collectives for JS: the process group, tensor collectives, bytes for JSON
//! objects, and the data-parallel gradient all-reduce.

use accelerate_core::dist::{self, GroupConfig, Reduce};
use accelerate_core::Error;
use napi::bindgen_prelude::Buffer;
use napi::{Env, Result};
use napi_derive::napi;
use std::time::Duration;

use crate::convert::{guarded, wrap};
use crate::tensor::Tensor;

#[napi(object)]
pub struct ProcessGroupOptions {
    pub host: String,
    pub port: u32,
    pub rank: u32,
    pub world_size: u32,
    pub timeout_ms: f64,
    pub local_address: String,
    /// Use NCCL on this CUDA device; Gloo on the CPU when absent.
    pub cuda_device: Option<u32>,
}

/// Joins the process group (rank 0 serves the rendezvous store at host:port).
#[napi]
pub fn dist_init(options: ProcessGroupOptions) -> Result<()> {
    guarded("initProcessGroup", || {
        let port = u16::try_from(options.port)
            .map_err(|_| Error::invalid("initProcessGroup", format!("port {} is out of range", options.port)))?;
        dist::init(&GroupConfig {
            host: options.host,
            port,
            rank: options.rank as usize,
            world_size: options.world_size as usize,
            timeout: Duration::from_millis(options.timeout_ms as u64),
            local_address: options.local_address,
            cuda_device: options.cuda_device.map(|d| d as usize),
        })
    })
}

/// Leaves the process group after a barrier.
#[napi]
pub fn dist_destroy() -> Result<()> {
    guarded("destroyProcessGroup", dist::destroy)
}

#[napi]
pub fn dist_is_initialized() -> bool {
    dist::is_initialized()
}

fn reduce_kind(op: &str, name: &str) -> accelerate_core::Result<Reduce> {
    match name {
        "sum" => Ok(Reduce::Sum),
        "mean" => Ok(Reduce::Mean),
        "max" => Ok(Reduce::Max),
        "min" => Ok(Reduce::Min),
        other => Err(Error::invalid(
            op,
            format!("reduction must be \"sum\", \"mean\", \"max\" or \"min\", got \"{other}\""),
        )),
    }
}

/// `tensor` reduced across processes, as a new tensor on every process.
#[napi]
pub fn dist_all_reduce(env: Env, tensor: Tensor, reduction: String) -> Result<Tensor> {
    guarded("reduce", || {
        let how = reduce_kind("reduce", &reduction)?;
        Ok(wrap(
            &env,
            dist::all_reduce("reduce", &*tensor.handle.get("reduce")?, how)?,
        ))
    })
}

/// Every process's `tensor` concatenated along dim 0; mismatched shapes fail everywhere.
#[napi]
pub fn dist_all_gather(env: Env, tensor: Tensor) -> Result<Tensor> {
    guarded("gather", || {
        Ok(wrap(&env, dist::all_gather("gather", &*tensor.handle.get("gather")?)?))
    })
}

/// Overwrites `tensor` with process `root`'s values.
#[napi]
pub fn dist_broadcast(tensor: Tensor, root: u32) -> Result<()> {
    guarded("broadcast", || {
        let mut t = tensor.handle.get("broadcast")?.shallow_clone();
        dist::broadcast_("broadcast", &mut t, root as usize)
    })
}

/// Every process's bytes, in rank order.
#[napi]
pub fn dist_all_gather_bytes(bytes: Buffer) -> Result<Vec<Buffer>> {
    guarded("gatherObject", || {
        Ok(dist::all_gather_bytes("gatherObject", &bytes)?
            .into_iter()
            .map(Buffer::from)
            .collect())
    })
}

#[napi]
pub fn dist_barrier() -> Result<()> {
    guarded("waitForEveryone", || dist::barrier("waitForEveryone"))
}

/// Copies process 0's values of `params` to every process.
#[napi]
pub fn dist_broadcast_parameters(params: Vec<Tensor>) -> Result<()> {
    guarded("prepare", || {
        let params = params
            .iter()
            .map(|p| Ok(p.handle.get("prepare")?.shallow_clone()))
            .collect::<accelerate_core::Result<Vec<_>>>()?;
        dist::broadcast_parameters(&params)
    })
}

/// Averages one model's gradients across processes while backward runs.
#[napi]
pub struct DdpReducer {
    inner: dist::Reducer,
}

#[napi]
impl DdpReducer {
    #[napi(constructor)]
    pub fn new(params: Vec<Tensor>, bucket_bytes: f64) -> Result<Self> {
        guarded("prepare", || {
            let params = params
                .iter()
                .map(|p| Ok(p.handle.get("prepare")?.shallow_clone()))
                .collect::<accelerate_core::Result<Vec<_>>>()?;
            Ok(DdpReducer {
                inner: dist::Reducer::new(&params, bucket_bytes.max(1.0) as usize)?,
            })
        })
    }

    /// Before backward: `sync` false only accumulates gradients; `deferred` averages them only
    /// in `finish` (gradients from several backward passes).
    #[napi]
    pub fn prepare(&self, sync: bool, deferred: bool) -> Result<()> {
        guarded("backward", || self.inner.prepare(sync, deferred))
    }

    /// After backward: waits for the all-reduces and writes the averaged gradients.
    #[napi]
    pub fn finish(&self) -> Result<()> {
        guarded("backward", || self.inner.finish())
    }
}
