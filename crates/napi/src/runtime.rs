//! Process-wide switches and facts: seeding, grad mode, live tensors, CUDA.

use accelerate_core::{cuda, device, memory, profiler, tensor};
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

/// What `profilerStart` records (torch.profiler's arguments); cpu and cuda default to false.
#[napi(object)]
pub struct ProfilerOptions {
    pub cpu: Option<bool>,
    pub cuda: Option<bool>,
    pub record_shapes: Option<bool>,
    pub profile_memory: Option<bool>,
    pub with_flops: Option<bool>,
}

#[napi]
pub fn profiler_start(options: ProfilerOptions) -> Result<()> {
    guarded("profile", || {
        profiler::start(profiler::ProfilerOptions {
            cpu: options.cpu.unwrap_or(false),
            cuda: options.cuda.unwrap_or(false),
            record_shapes: options.record_shapes.unwrap_or(false),
            profile_memory: options.profile_memory.unwrap_or(false),
            with_flops: options.with_flops.unwrap_or(false),
        })
    })
}

/// One operator's or kernel's events added up.
#[napi(object)]
pub struct ProfileRow {
    pub name: String,
    /// "cpu" (operators) or "cuda" (kernels and copies on the GPU).
    pub device: String,
    pub count: f64,
    pub total_ns: f64,
    pub flops: f64,
}

/// Stops the running profile, writes its Chrome trace to `tracePath` when given, and returns
/// its events added up per name, the largest total first.
#[napi]
pub fn profiler_stop(trace_path: Option<String>) -> Result<Vec<ProfileRow>> {
    guarded("profile", || {
        let profile = profiler::stop()?;
        if let Some(path) = trace_path {
            profile.save(&path)?;
        }
        Ok(profile
            .summary()?
            .into_iter()
            .map(|r| ProfileRow {
                name: r.name,
                device: if r.on_gpu { "cuda" } else { "cpu" }.to_string(),
                count: r.count as f64,
                total_ns: r.total_ns as f64,
                flops: r.flops as f64,
            })
            .collect())
    })
}
