//! The NCCL backend: a shared library embedded at build time (it links
//! libtorch_cuda) and loaded on first use, so CPU-only hosts never need CUDA.

use crate::{Error, Result};
use std::ffi::c_void;

#[cfg(acc_nccl)]
const LIBRARY: &[u8] = include_bytes!(env!("ACC_NCCL_SHIM_PATH"));

type GroupNew = unsafe extern "C" fn(*const std::os::raw::c_char, i32, i32, i32, i64, i32, *mut *mut c_void) -> i32;
type LastError = unsafe extern "C" fn() -> *const std::os::raw::c_char;

#[cfg(acc_nccl)]
fn library() -> Result<&'static libloading::Library> {
    use std::sync::OnceLock;
    static LOADED: OnceLock<std::result::Result<libloading::Library, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "accelerate-ts-nccl-{}-{}.so",
            env!("CARGO_PKG_VERSION"),
            LIBRARY.len()
        ));
        if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(LIBRARY.len()) {
            let staging = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&staging, LIBRARY)
                .and_then(|_| std::fs::rename(&staging, &path))
                .map_err(|e| e.to_string())?;
        }
        // SAFETY: loading our own shim, whose initialisers only register nothing global.
        unsafe { libloading::Library::new(&path) }.map_err(|e| e.to_string())
    });
    loaded
        .as_ref()
        .map_err(|e| Error::invalid("initProcessGroup", format!("could not load the NCCL backend: {e}")))
}

#[cfg(not(acc_nccl))]
fn library() -> Result<&'static libloading::Library> {
    Err(Error::invalid(
        "initProcessGroup",
        "this build has no NCCL backend (CUDA/NCCL headers were missing at build time)",
    ))
}

/// Creates an NCCL group bound to `cuda:device`; returns the shim's group handle.
pub(crate) fn group_new(
    host: &std::ffi::CStr,
    port: u16,
    rank: usize,
    world: usize,
    timeout_ms: i64,
    device: usize,
) -> Result<*mut c_void> {
    let op = "initProcessGroup";
    let lib = library()?;
    // SAFETY: symbols of our shim with the declared signatures.
    let (new, last_error) = unsafe {
        let new = lib
            .get::<GroupNew>(b"acc_nccl_group_new\0")
            .map_err(|e| Error::invalid(op, e.to_string()))?;
        let last_error = lib
            .get::<LastError>(b"acc_nccl_last_error\0")
            .map_err(|e| Error::invalid(op, e.to_string()))?;
        (*new, *last_error)
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: valid C string and out-pointer for the duration of the call.
    let status = unsafe {
        new(
            host.as_ptr(),
            i32::from(port),
            rank as i32,
            world as i32,
            timeout_ms,
            device as i32,
            &mut raw,
        )
    };
    if status != 0 {
        // SAFETY: the shim returns its thread-local NUL-terminated message.
        let message = unsafe { std::ffi::CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned();
        return Err(Error::invalid(op, message.lines().next().unwrap_or("").to_string()));
    }
    Ok(raw)
}
