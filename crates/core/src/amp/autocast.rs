//! Autocast with a dtype, on the CPU and on CUDA: a guard that turns it on (or off) for a
//! device type and restores the previous setting when dropped, entered and left exactly as
//! torch.autocast's `__enter__`/`__exit__` do. Autocast state is per thread in libtorch.

use super::fp8::Fp8Guard;
use crate::shim::check;
use crate::{dtype, Error, Result};
use std::cell::RefCell;
use tch::{Device, Kind};

extern "C" {
    fn acc_autocast_state(device: i32, enabled: *mut i32, dtype: *mut i32) -> i32;
    fn acc_autocast_enter(device: i32, enabled: i32, dtype: i32) -> i32;
    fn acc_autocast_exit(device: i32, enabled: i32, dtype: i32) -> i32;
}

/// The device types autocast covers here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    Cpu = 0,
    Cuda = 1,
}

impl DeviceType {
    pub fn of(op: &str, device: Device) -> Result<DeviceType> {
        match device {
            Device::Cpu => Ok(DeviceType::Cpu),
            Device::Cuda(_) => Ok(DeviceType::Cuda),
            other => Err(Error::invalid(
                op,
                format!("autocast covers cpu and cuda devices, not {other:?}"),
            )),
        }
    }
}

// c10::ScalarType codes (c10/core/ScalarType.h) of the dtypes autocast runs in; tch keeps its
// own mapping private.
const HALF: i32 = 5;
const FLOAT: i32 = 6;
const BFLOAT16: i32 = 15;

fn code_of(op: &str, kind: Kind) -> Result<i32> {
    match kind {
        Kind::Half => Ok(HALF),
        Kind::BFloat16 => Ok(BFLOAT16),
        other => Err(Error::invalid(
            op,
            format!("the dtype must be float16 or bfloat16, got {}", dtype::name(other)),
        )),
    }
}

/// Whether autocast is on for a device type, and in which dtype (kept as libtorch's code
/// so that any previous setting comes back exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutocastState {
    pub enabled: bool,
    dtype_code: i32,
}

impl AutocastState {
    /// The autocast dtype, when it is one of float16, bfloat16 and float32.
    pub fn dtype(&self) -> Option<Kind> {
        match self.dtype_code {
            HALF => Some(Kind::Half),
            BFLOAT16 => Some(Kind::BFloat16),
            FLOAT => Some(Kind::Float),
            _ => None,
        }
    }
}

/// This thread's autocast setting for `device_type`.
pub fn state(device_type: DeviceType) -> Result<AutocastState> {
    let (mut enabled, mut dtype_code) = (0, 0);
    // SAFETY: both out-pointers are valid for the call.
    check("autocast", unsafe {
        acc_autocast_state(device_type as i32, &mut enabled, &mut dtype_code)
    })?;
    Ok(AutocastState {
        enabled: enabled != 0,
        dtype_code,
    })
}

pub fn is_enabled(device_type: DeviceType) -> Result<bool> {
    Ok(state(device_type)?.enabled)
}

/// Autocast on (or, with `enabled` false, off) for one device type until dropped; guards
/// nest, and each restores what was set before it.
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device_type: DeviceType,
    previous: AutocastState,
}

impl AutocastGuard {
    pub fn new(device_type: DeviceType, kind: Kind, enabled: bool) -> Result<AutocastGuard> {
        let code = code_of("autocast", kind)?;
        let previous = state(device_type)?;
        // SAFETY: plain values; the shim checks the device code.
        check("autocast", unsafe {
            acc_autocast_enter(device_type as i32, i32::from(enabled), code)
        })?;
        Ok(AutocastGuard { device_type, previous })
    }

    pub fn device_type(&self) -> DeviceType {
        self.device_type
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let AutocastState { enabled, dtype_code } = self.previous;
        // SAFETY: plain values. The shim only fails on an unknown device code, which `new`
        // already ruled out, and a drop has nowhere to report an error.
        let _ = unsafe { acc_autocast_exit(self.device_type as i32, i32::from(enabled), dtype_code) };
    }
}

/// One autocast scope entered for a caller that cannot hold guards across its own code.
struct Scope {
    _autocast: AutocastGuard,
    _fp8: Fp8Guard,
}

thread_local! {
    // Scopes entered by callers that cannot hold a guard across their own code (JS callbacks).
    static SCOPES: RefCell<Vec<Scope>> = const { RefCell::new(Vec::new()) };
}

/// Enters autocast as a scope on this thread's stack, with Linear layers in fp8 when `fp8`
/// (amp::fp8); returns the token that `exit_scope` takes, so that scopes can only end
/// innermost first.
pub fn enter_scope(device_type: DeviceType, kind: Kind, enabled: bool, fp8: bool) -> Result<usize> {
    let scope = Scope {
        _autocast: AutocastGuard::new(device_type, kind, enabled)?,
        _fp8: Fp8Guard::new(fp8 && enabled),
    };
    Ok(SCOPES.with(|s| {
        let mut scopes = s.borrow_mut();
        scopes.push(scope);
        scopes.len()
    }))
}

/// Ends the scope that `enter_scope` returned `token` for; it must be the innermost one.
pub fn exit_scope(token: usize) -> Result<()> {
    let guard = SCOPES.with(|s| {
        let mut scopes = s.borrow_mut();
        if token == 0 || token != scopes.len() {
            return Err(Error::invalid(
                "autocast",
                format!(
                    "scope {token} ended out of order ({} scopes are open); end the innermost first",
                    scopes.len()
                ),
            ));
        }
        Ok(scopes.pop())
    })?;
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn matmul_kind() -> Kind {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        a.matmul(&b).kind()
    }

    #[test]
    fn cpu_guard_runs_matmul_in_its_dtype_and_restores() -> Result<()> {
        let before = state(DeviceType::Cpu)?;
        assert!(!before.enabled);
        {
            let _outer = AutocastGuard::new(DeviceType::Cpu, Kind::BFloat16, true)?;
            assert_eq!(matmul_kind(), Kind::BFloat16);
            {
                let _off = AutocastGuard::new(DeviceType::Cpu, Kind::BFloat16, false)?;
                assert_eq!(matmul_kind(), Kind::Float);
            }
            assert_eq!(matmul_kind(), Kind::BFloat16);
            let _inner = AutocastGuard::new(DeviceType::Cpu, Kind::Half, true)?;
            assert_eq!(state(DeviceType::Cpu)?.dtype(), Some(Kind::Half));
            assert!(!is_enabled(DeviceType::Cuda)?);
        }
        assert_eq!(state(DeviceType::Cpu)?, before);
        assert_eq!(matmul_kind(), Kind::Float);
        Ok(())
    }

    #[test]
    fn scopes_end_innermost_first() -> Result<()> {
        let outer = enter_scope(DeviceType::Cpu, Kind::BFloat16, true, false)?;
        let inner = enter_scope(DeviceType::Cpu, Kind::Half, true, false)?;
        let err = exit_scope(outer).unwrap_err().to_string();
        assert!(err.contains("out of order"), "{err}");
        exit_scope(inner)?;
        assert_eq!(state(DeviceType::Cpu)?.dtype(), Some(Kind::BFloat16));
        exit_scope(outer)?;
        assert!(!is_enabled(DeviceType::Cpu)?);
        Ok(())
    }

    #[test]
    fn cuda_guard_runs_matmul_in_bfloat16() -> Result<()> {
        if !crate::device::cuda_is_available() {
            return Ok(()); // only meaningful on a GPU host
        }
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cuda(0)));
        let guard = AutocastGuard::new(DeviceType::Cuda, Kind::BFloat16, true)?;
        assert_eq!(a.matmul(&a.tr()).kind(), Kind::BFloat16);
        assert_eq!(matmul_kind(), Kind::Float); // the CPU is not covered
        drop(guard);
        assert_eq!(a.matmul(&a.tr()).kind(), Kind::Float);
        Ok(())
    }

    #[test]
    fn refuses_other_dtypes() {
        let err = AutocastGuard::new(DeviceType::Cpu, Kind::Double, true)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("autocast: the dtype must be float16 or bfloat16, got float64")
        );
    }
}
