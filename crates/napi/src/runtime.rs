//! Process-wide switches and facts: seeding, grad mode, live tensors, CUDA.

use accelerate_core::{cuda, device, memory, tensor};
use napi::{Env, Result};

use crate::convert::guarded;
use crate::tensor::free_collected;
use napi_derive::napi;

#[napi]
pub fn manual_seed(seed: crate::int::Int) -> Result<()> {
    guarded("manualSeed", || {
        tensor::manual_seed(seed.get("manualSeed", "seed")?);
        Ok(())
    })
}

/// Turns gradient recording on or off; returns the previous setting.
#[napi]
pub fn set_grad_enabled(enabled: bool) -> bool {
    tensor::set_grad_enabled(enabled)
}

#[napi]
pub fn is_grad_enabled() -> bool {
    tensor::is_grad_enabled()
}

/// Tensors alive now (created and neither disposed nor garbage-collected); frees the
/// collected ones first.
#[napi]
pub fn live_tensors(env: Env) -> Result<i64> {
    free_collected(&env)?;
    Ok(memory::live_tensors())
}

#[napi]
pub fn cuda_is_available() -> bool {
    device::cuda_is_available()
}

#[napi]
pub fn cuda_device_count() -> u32 {
    device::cuda_device_count() as u32
}

#[napi(object)]
pub struct MemoryStats {
    /// Bytes held by tensors now.
    pub allocated: f64,
    /// Bytes the caching allocator holds from the driver now.
    pub reserved: f64,
    /// The most bytes held by tensors since the last reset.
    pub peak: f64,
}

/// The CUDA caching allocator's statistics for `cuda:device`.
#[napi]
pub fn cuda_memory_stats(device: u32) -> Result<MemoryStats> {
    guarded("memory", || {
        let s = cuda::memory_stats(device as usize)?;
        Ok(MemoryStats {
            allocated: s.allocated as f64,
            reserved: s.reserved as f64,
            peak: s.peak_allocated as f64,
        })
    })
}

#[napi]
pub fn cuda_reset_peak_memory(device: u32) -> Result<()> {
    guarded("resetPeakMemory", || cuda::reset_peak_memory(device as usize))
}

/// Returns cached, unused GPU memory to the driver.
#[napi]
pub fn cuda_empty_cache() -> Result<()> {
    guarded("freeMemory", cuda::empty_cache)
}

/// Waits for all work queued on `cuda:device`.
#[napi]
pub fn cuda_synchronize(device: u32) -> Result<()> {
    guarded("synchronize", || cuda::synchronize(device as usize))
}

#[napi(object)]
pub struct CudaDeviceInfo {
    pub name: String,
    /// Total memory in bytes.
    pub total_memory: f64,
    /// Compute capability as [major, minor], e.g. [9, 0] for Hopper.
    pub capability: Vec<i32>,
}

#[napi]
pub fn cuda_device_info(device: u32) -> Result<CudaDeviceInfo> {
    guarded("cudaDeviceInfo", || {
        let info = cuda::device_info(device as usize)?;
        Ok(CudaDeviceInfo {
            name: info.name,
            total_memory: info.total_memory as f64,
            capability: vec![info.capability.0, info.capability.1],
        })
    })
}

#[napi(object)]
pub struct CudaVersions {
    pub cuda: f64,
    pub cudnn: f64,
    pub nccl: f64,
}

/// The CUDA runtime, cuDNN and NCCL versions libtorch was loaded with (integers; 0 when unknown).
#[napi]
pub fn cuda_versions() -> Result<CudaVersions> {
    guarded("cudaVersions", || {
        let (cuda, cudnn, nccl) = cuda::versions()?;
        Ok(CudaVersions {
            cuda: cuda as f64,
            cudnn: cudnn as f64,
            nccl: nccl as f64,
        })
    })
}

/// One step's GPU work captured as a CUDA graph and replayed (accelerator.compileStep).
#[napi]
pub struct CudaGraph {
    inner: Option<cuda::CudaGraph>,
}

impl CudaGraph {
    fn graph(&self) -> accelerate_core::Result<&cuda::CudaGraph> {
        self.inner
            .as_ref()
            .ok_or_else(|| accelerate_core::Error::invalid("compileStep", "the captured step was released"))
    }
}

#[napi]
impl CudaGraph {
    #[napi(constructor)]
    pub fn new(device: u32) -> Result<Self> {
        guarded("compileStep", || {
            Ok(CudaGraph {
                inner: Some(cuda::CudaGraph::new(device as usize)?),
            })
        })
    }

    /// Starts capturing this thread's CUDA work.
    #[napi]
    pub fn begin(&self) -> Result<()> {
        guarded("compileStep", || self.graph()?.begin())
    }

    /// Ends the capture; an Error when something in it was not capturable.
    #[napi]
    pub fn end(&self) -> Result<()> {
        guarded("compileStep", || self.graph()?.end())
    }

    /// Ends a capture that failed.
    #[napi]
    pub fn abort(&self) -> Result<()> {
        guarded("compileStep", || self.graph()?.abort())
    }

    /// Queues the captured work on the current stream.
    #[napi]
    pub fn replay(&self) -> Result<()> {
        guarded("compileStep", || self.graph()?.replay())
    }

    /// Frees the graph and its memory now (after any replay in flight).
    #[napi]
    pub fn release(&mut self) {
        self.inner = None;
    }
}
