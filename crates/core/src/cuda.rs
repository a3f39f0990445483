//! The CUDA side of the engine: a shared library embedded at build time (it links
//! libtorch_cuda) and loaded on first use, so CPU-only hosts never need CUDA. It
//! provides the NCCL process group, the caching allocator's statistics, CUDA graphs and
//! run-time compiled kernels that the main shim uses once registered.

use crate::{Error, Result};
use std::ffi::{c_void, CStr};
use tch::Tensor;

#[cfg(acc_cuda)]
const LIBRARY: &[u8] = include_bytes!(env!("ACC_CUDA_SHIM_PATH"));

#[cfg(acc_cuda)]
fn library(op: &str) -> Result<&'static libloading::Library> {
    use std::sync::OnceLock;
    static LOADED: OnceLock<std::result::Result<libloading::Library, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        // An anonymous in-memory file: nothing on disk that another user could replace.
        // SAFETY: a valid name and flags; the descriptor stays open for the process's life.
        let fd = unsafe { libc::memfd_create(c"accelerate-ts-cuda".as_ptr(), 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let path = format!("/proc/self/fd/{fd}");
        std::fs::write(&path, LIBRARY).map_err(|e| e.to_string())?;
        // SAFETY: our own shim library; its dependencies (libtorch_cuda) are already loaded.
        unsafe { libloading::Library::new(&path) }.map_err(|e| e.to_string())
    });
    loaded
        .as_ref()
        .map_err(|e| Error::invalid(op, format!("could not load the CUDA extras: {e}")))
}

#[cfg(not(acc_cuda))]
fn library(op: &str) -> Result<&'static libloading::Library> {
    Err(Error::invalid(
        op,
        "this build has no CUDA extras (CUDA/NCCL headers were missing at build time)",
    ))
}

type LastError = unsafe extern "C" fn() -> *const std::os::raw::c_char;

/// Calls `f` with a symbol of the library, turning a non-zero status into an Error naming `op`.
fn call<F: Copy>(op: &str, symbol: &[u8], f: impl FnOnce(F) -> i32) -> Result<()> {
    let lib = library(op)?;
    // SAFETY: symbols of our shim with the signatures its callers declare.
    let (function, last_error) = unsafe {
        let function = lib.get::<F>(symbol).map_err(|e| Error::invalid(op, e.to_string()))?;
        let last_error = lib
            .get::<LastError>(b"acc_cuda_last_error\0")
            .map_err(|e| Error::invalid(op, e.to_string()))?;
        (*function, *last_error)
    };
    if f(function) == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns its thread-local NUL-terminated message.
    let message = unsafe { CStr::from_ptr(last_error()) }.to_string_lossy().into_owned();
    Err(Error::invalid(op, message.lines().next().unwrap_or("").to_string()))
}

/// `register_kernels` when `tensor` is on a GPU: what a shim function taking it may use.
pub fn register_kernels_for(tensor: &tch::Tensor) {
    if tensor.device().is_cuda() {
        register_kernels();
    }
}

/// Hands the CUDA side's kernels (shim-cuda/kernels.cpp) to the main shim, once. Where the
/// CUDA side cannot be loaded the shim keeps its ATen paths, which compute the same values.
pub fn register_kernels() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(lib) = library("kernels") else { return };
        // SAFETY: our shim's symbol, with the signature kernels.cpp defines.
        let Ok(table) = (unsafe { lib.get::<unsafe extern "C" fn() -> *const c_void>(b"acc_cuda_kernels\0") }) else {
            return;
        };
        // SAFETY: the table is a static of the library, which stays loaded for the process's life.
        unsafe { crate::shim::set_cuda_kernels(table()) }
    });
}

type GroupNew = unsafe extern "C" fn(*const std::os::raw::c_char, i32, i32, i32, i64, i32, *mut *mut c_void) -> i32;

/// Creates an NCCL group bound to `cuda:device`; returns the shim's group handle.
pub(crate) fn nccl_group_new(
    host: &CStr,
    port: u16,
    rank: usize,
    world: usize,
    timeout_ms: i64,
    device: usize,
) -> Result<*mut c_void> {
    let mut raw = std::ptr::null_mut();
    call::<GroupNew>("initProcessGroup", b"acc_nccl_group_new\0", |new| {
        // SAFETY: valid C string and out-pointer for the duration of the call.
        unsafe {
            new(
                host.as_ptr(),
                i32::from(port),
                rank as i32,
                world as i32,
                timeout_ms,
                device as i32,
                &mut raw,
            )
        }
    })?;
    Ok(raw)
}

/// Bytes held by tensors now, reserved by the caching allocator now, and the peak held since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub allocated: i64,
    pub reserved: i64,
    pub peak_allocated: i64,
}

pub fn memory_stats(device: usize) -> Result<MemoryStats> {
    let mut out = [0i64; 3];
    call::<unsafe extern "C" fn(i32, *mut i64) -> i32>("memory", b"acc_cuda_memory_stats\0", |f| {
        // SAFETY: `out` has the three slots the shim writes.
        unsafe { f(device as i32, out.as_mut_ptr()) }
    })?;
    Ok(MemoryStats {
        allocated: out[0],
        reserved: out[1],
        peak_allocated: out[2],
    })
}

pub fn reset_peak_memory(device: usize) -> Result<()> {
    // SAFETY: plain call with an integer argument.
    call::<unsafe extern "C" fn(i32) -> i32>("resetPeakMemory", b"acc_cuda_reset_peak_memory\0", |f| unsafe {
        f(device as i32)
    })
}

/// Returns the allocator's cached, unused blocks to the driver, after releasing the
/// conversions that chains of layers keep between calls.
pub fn empty_cache() -> Result<()> {
    crate::shim::forget_kept_casts();
    // SAFETY: plain call without arguments.
    call::<unsafe extern "C" fn() -> i32>("freeMemory", b"acc_cuda_empty_cache\0", |f| unsafe { f() })
}

/// Waits for all work queued on `cuda:device`.
pub fn synchronize(device: usize) -> Result<()> {
    // SAFETY: plain call with an integer argument.
    call::<unsafe extern "C" fn(i32) -> i32>("synchronize", b"acc_cuda_synchronize\0", |f| unsafe {
        f(device as i32)
    })
}

/// What a GPU is.
pub struct DeviceInfo {
    pub name: String,
    /// Total memory in bytes.
    pub total_memory: i64,
    /// Compute capability (major, minor), e.g. (9, 0) for Hopper.
    pub capability: (i32, i32),
}

/// A GPU's name, total memory and compute capability.
pub fn device_info(device: usize) -> Result<DeviceInfo> {
    let mut name = [0u8; 256];
    let mut total = 0i64;
    let mut capability = [0i32; 2];
    call::<unsafe extern "C" fn(i32, *mut u8, usize, *mut i64, *mut i32) -> i32>(
        "cudaDeviceInfo",
        b"acc_cuda_device_info\0",
        |f| {
            // SAFETY: `name` has the length passed; `total` and the 2 capability integers are valid out-pointers.
            unsafe {
                f(
                    device as i32,
                    name.as_mut_ptr(),
                    name.len(),
                    &mut total,
                    capability.as_mut_ptr(),
                )
            }
        },
    )?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(DeviceInfo {
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        total_memory: total,
        capability: (capability[0], capability[1]),
    })
}

/// (CUDA runtime, cuDNN, NCCL) versions as integers (e.g. 13000, 91900, 22809); 0 when unknown.
pub fn versions() -> Result<(i64, i64, i64)> {
    let mut out = [0i64; 3];
    call::<unsafe extern "C" fn(*mut i64) -> i32>("cudaVersions", b"acc_cuda_versions\0", |f| {
        // SAFETY: `out` has the three slots the shim writes.
        unsafe { f(out.as_mut_ptr()) }
    })?;
    Ok((out[0], out[1], out[2]))
}

/// A host-to-device copy running on a side stream; `wait` orders the caller's stream after it.
pub struct PendingCopy {
    raw: *mut c_void,
}

// SAFETY: the event is created on the loader thread and waited for (once) on the consumer's.
unsafe impl Send for PendingCopy {}

impl PendingCopy {
    /// Makes this thread's current CUDA stream wait for the copy of `tensors`.
    pub fn wait(self, tensors: &[Tensor]) -> Result<()> {
        let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(Tensor::as_ptr).collect();
        call::<unsafe extern "C" fn(*mut c_void, *const *const torch_sys::C_tensor, i32) -> i32>(
            "DataLoader",
            b"acc_cuda_copy_wait\0",
            // SAFETY: a live event and tensors for the duration of the call.
            |f| unsafe { f(self.raw, ptrs.as_ptr(), ptrs.len() as i32) },
        )
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if let Ok(lib) = library("DataLoader") {
            // SAFETY: our shim's destructor for the event it created.
            if let Ok(free) = unsafe { lib.get::<unsafe extern "C" fn(*mut c_void)>(b"acc_cuda_copy_free\0") } {
                unsafe { free(self.raw) };
            }
        }
    }
}

/// An uninitialised CPU tensor of `shape` with `like`'s dtype, in pinned (page-locked) memory
/// from the caching host allocator: a copy from it to a GPU can run asynchronously.
pub fn empty_pinned(like: &Tensor, shape: &[i64]) -> Result<Tensor> {
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    type EmptyPinned =
        unsafe extern "C" fn(*const torch_sys::C_tensor, *const i64, i32, *mut *mut torch_sys::C_tensor) -> i32;
    call::<EmptyPinned>("DataLoader", b"acc_cuda_empty_pinned\0", |f| {
        // SAFETY: a live tensor, a shape of the given length and a valid out-pointer.
        unsafe { f(like.as_ptr(), shape.as_ptr(), shape.len() as i32, &mut out) }
    })?;
    // SAFETY: on success the shim stored a fresh heap tensor that tch now owns.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Copies CPU `tensors` to `cuda:device` on a side stream from pinned memory, without blocking.
pub fn copy_async(tensors: &[Tensor], device: usize) -> Result<(Vec<Tensor>, PendingCopy)> {
    let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(Tensor::as_ptr).collect();
    let mut out: Vec<*mut torch_sys::C_tensor> = vec![std::ptr::null_mut(); tensors.len()];
    let mut raw = std::ptr::null_mut();
    type CopyAsync = unsafe extern "C" fn(
        *const *const torch_sys::C_tensor,
        i32,
        i32,
        *mut *mut torch_sys::C_tensor,
        *mut *mut c_void,
    ) -> i32;
    call::<CopyAsync>("DataLoader", b"acc_cuda_copy_async\0", |f| {
        // SAFETY: arrays of the given length and valid out-pointers.
        unsafe {
            f(
                ptrs.as_ptr(),
                ptrs.len() as i32,
                device as i32,
                out.as_mut_ptr(),
                &mut raw,
            )
        }
    })?;
    // SAFETY: on success the shim stored fresh heap tensors that tch now owns.
    let copies = out.into_iter().map(|p| unsafe { Tensor::from_ptr(p) }).collect();
    Ok((copies, PendingCopy { raw }))
}

/// A CUDA graph of one step's GPU work (accelerator.compileStep): captured once from the
/// calling thread's stream, then replayed.
pub struct CudaGraph {
    raw: *mut c_void,
}

const GRAPH_OP: &str = "compileStep";

impl CudaGraph {
    /// A graph for work on `cuda:device`, with a memory pool of its own.
    pub fn new(device: usize) -> Result<CudaGraph> {
        let mut raw = std::ptr::null_mut();
        call::<unsafe extern "C" fn(i32, *mut *mut c_void) -> i32>(GRAPH_OP, b"acc_cuda_graph_new\0", |f| {
            // SAFETY: a valid out-pointer for the duration of the call.
            unsafe { f(device as i32, &mut raw) }
        })?;
        Ok(CudaGraph { raw })
    }

    fn run(&self, symbol: &[u8]) -> Result<()> {
        call::<unsafe extern "C" fn(*mut c_void) -> i32>(GRAPH_OP, symbol, |f| {
            // SAFETY: `raw` is live until drop.
            unsafe { f(self.raw) }
        })
    }

    /// Starts capturing this thread's CUDA work (and backward's, which follows its stream).
    /// Chains' kept conversions (shim/casts.cpp) are released before and after a capture, so
    /// that the graph writes only conversions it made itself, in its own memory pool.
    pub fn begin(&self) -> Result<()> {
        crate::shim::forget_kept_casts();
        self.run(b"acc_cuda_graph_begin\0")
    }

    /// Ends the capture; an Error when something in it was not capturable.
    pub fn end(&self) -> Result<()> {
        let ended = self.run(b"acc_cuda_graph_end\0");
        crate::shim::forget_kept_casts();
        ended
    }

    /// Ends a capture that failed, ignoring what CUDA reports.
    pub fn abort(&self) -> Result<()> {
        let ended = self.run(b"acc_cuda_graph_abort\0");
        crate::shim::forget_kept_casts();
        ended
    }

    /// Queues the captured work on the current stream.
    pub fn replay(&self) -> Result<()> {
        self.run(b"acc_cuda_graph_replay\0")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if let Ok(lib) = library(GRAPH_OP) {
            // SAFETY: our shim's destructor for the graph it created, called once.
            if let Ok(free) = unsafe { lib.get::<unsafe extern "C" fn(*mut c_void)>(b"acc_cuda_graph_free\0") } {
                unsafe { free(self.raw) };
            }
        }
    }
}
