//! The process group of this process: created once from the launcher's settings,
//! used by every collective, freed by `destroy` (the Accelerator's `endTraining`).

use crate::shim::check;
use crate::{Error, Result};
use std::ffi::{c_void, CString};
use std::sync::Mutex;
use std::time::Duration;

extern "C" {
    fn acc_group_new(
        host: *const std::os::raw::c_char,
        port: i32,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        local_address: *const std::os::raw::c_char,
        out: *mut *mut c_void,
    ) -> i32;
    fn acc_group_free(group: *mut c_void);
}

/// Where and how this process meets the others.
pub struct GroupConfig {
    /// The rendezvous host (`MASTER_ADDR`); rank 0 serves the store there.
    pub host: String,
    pub port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// How long rendezvous and each collective may wait before failing.
    pub timeout: Duration,
    /// This process's address for Gloo's connections.
    pub local_address: String,
    /// Use NCCL on this CUDA device (one GPU per process); Gloo on the CPU when `None`.
    pub cuda_device: Option<usize>,
}

pub(crate) struct Group {
    pub(crate) raw: *mut c_void,
    pub(crate) rank: usize,
    pub(crate) world_size: usize,
    /// Where collective buffers live: the CPU for Gloo, the bound GPU for NCCL.
    pub(crate) device: tch::Device,
}

// SAFETY: c10d's store and Gloo backend may be used from any thread, one call at a time,
// which the Mutex below guarantees.
unsafe impl Send for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: `raw` came from acc_group_new and is freed once.
        unsafe { acc_group_free(self.raw) }
    }
}

static GROUP: Mutex<Option<Group>> = Mutex::new(None);

/// Joins the process group; fails if this process already joined one.
pub fn init(config: &GroupConfig) -> Result<()> {
    let op = "initProcessGroup";
    let mut slot = GROUP
        .lock()
        .map_err(|_| Error::invalid(op, "the process group lock is poisoned"))?;
    if slot.is_some() {
        return Err(Error::invalid(op, "this process already joined a process group"));
    }
    if config.timeout.is_zero() {
        return Err(Error::invalid(op, "the timeout must be positive"));
    }
    if config.rank >= config.world_size {
        return Err(Error::invalid(
            op,
            format!("rank {} is not below world size {}", config.rank, config.world_size),
        ));
    }
    let host = CString::new(config.host.clone()).map_err(|_| Error::invalid(op, "the host contains a NUL byte"))?;
    let local = CString::new(config.local_address.clone())
        .map_err(|_| Error::invalid(op, "the address contains a NUL byte"))?;
    let timeout_ms = config.timeout.as_millis() as i64;
    let created = match config.cuda_device {
        Some(device) => {
            crate::cuda::nccl_group_new(&host, config.port, config.rank, config.world_size, timeout_ms, device)
        }
        None => {
            let mut raw = std::ptr::null_mut();
            // SAFETY: valid C strings and out-pointer for the duration of the call.
            let status = unsafe {
                acc_group_new(
                    host.as_ptr(),
                    i32::from(config.port),
                    config.rank as i32,
                    config.world_size as i32,
                    timeout_ms,
                    local.as_ptr(),
                    &mut raw,
                )
            };
            check(op, status).map(|_| raw)
        }
    };
    let raw = created.map_err(|e| {
        let (host, port, rank, world) = (&config.host, config.port, config.rank, config.world_size);
        Error::invalid(
            op,
            format!("rendezvous at {host}:{port} as rank {rank} of {world} failed: {e}"),
        )
    })?;
    let device = config.cuda_device.map_or(tch::Device::Cpu, tch::Device::Cuda);
    *slot = Some(Group {
        raw,
        rank: config.rank,
        world_size: config.world_size,
        device,
    });
    Ok(())
}

pub fn is_initialized() -> bool {
    GROUP.lock().map(|g| g.is_some()).unwrap_or(false)
}

/// (rank, world size), or (0, 1) without a group.
pub fn world() -> (usize, usize) {
    GROUP
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|g| (g.rank, g.world_size)))
        .unwrap_or((0, 1))
}

/// Leaves the process group (after a barrier, so the store's server outlives its clients' last use).
pub fn destroy() -> Result<()> {
    if is_initialized() {
        super::barrier("destroyProcessGroup")?;
    }
    let mut slot = GROUP
        .lock()
        .map_err(|_| Error::invalid("destroyProcessGroup", "the process group lock is poisoned"))?;
    slot.take();
    Ok(())
}

/// Runs `f` with the group, or fails naming `op` when there is none.
pub(crate) fn with_group<T>(op: &str, f: impl FnOnce(&Group) -> Result<T>) -> Result<T> {
    let slot = GROUP
        .lock()
        .map_err(|_| Error::invalid(op, "the process group lock is poisoned"))?;
    let group = slot.as_ref().ok_or_else(|| {
        Error::invalid(
            op,
            "no process group: this process was not started by `accelerate launch`",
        )
    })?;
    f(group)
}
