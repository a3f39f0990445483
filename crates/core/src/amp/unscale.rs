//! Unscaling gradients in place with libtorch's `_amp_foreach_non_finite_check_and_unscale_`,
//! one call per (device, dtype) group as torch.amp.GradScaler._unscale_grads_ makes them.

use crate::shim::check;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn acc_amp_unscale(
        grads: *const *const C_tensor,
        n: i64,
        found_inf: *const C_tensor,
        inv_scale: *const C_tensor,
    ) -> i32;
}

/// Multiplies the gradients of `params` by `inv_scale` in place; returns a float32 scalar on
/// `inv_scale`'s device that is 1 if any of them held inf or NaN (before unscaling), else 0.
/// float16 gradients are refused, as torch does: the master weights must stay float32.
pub fn unscale_grads(op: &str, params: &[&Tensor], inv_scale: &Tensor) -> Result<Tensor> {
    let grads = params
        .iter()
        .map(|p| p.f_grad().map_err(Error::on(op, p)))
        .collect::<Result<Vec<_>>>()?;
    unscale(op, &grads, inv_scale)
}

/// As [`unscale_grads`], for gradients held apart from their parameters (ZeRO's partitions).
pub fn unscale(op: &str, grads: &[Tensor], inv_scale: &Tensor) -> Result<Tensor> {
    let mut groups: Vec<((Device, Kind), Vec<Tensor>)> = Vec::new();
    for grad in grads {
        if !grad.defined() {
            continue;
        }
        if grad.kind() == Kind::Half {
            return Err(Error::invalid(
                op,
                format!(
                    "attempting to unscale float16 gradients (of shape {:?}); keep parameters in float32 under mixed precision",
                    grad.size()
                ),
            ));
        }
        let key = (grad.device(), grad.kind());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(grad.shallow_clone()),
            None => groups.push((key, vec![grad.shallow_clone()])),
        }
    }
    let home = inv_scale.device();
    let mut found_inf = Tensor::f_zeros([], (Kind::Float, home)).map_err(Error::on(op, inv_scale))?;
    for ((device, _), grads) in &groups {
        let (found_here, inv_here) = if *device == home {
            (found_inf.shallow_clone(), inv_scale.shallow_clone())
        } else {
            (
                Tensor::f_zeros([], (Kind::Float, *device)).map_err(Error::on(op, inv_scale))?,
                inv_scale.f_to_device(*device).map_err(Error::on(op, inv_scale))?,
            )
        };
        let pointers: Vec<*const C_tensor> = grads.iter().map(|g| g.as_ptr()).collect();
        // SAFETY: every pointer refers to a live tensor held by `grads`, `found_here` or `inv_here`.
        check(op, unsafe {
            acc_amp_unscale(
                pointers.as_ptr(),
                pointers.len() as i64,
                found_here.as_ptr(),
                inv_here.as_ptr(),
            )
        })?;
        if *device != home {
            let back = found_here.f_to_device(home).map_err(Error::on(op, inv_scale))?;
            found_inf.f_add_(&back).map_err(Error::on(op, inv_scale)).map(drop)?;
        }
    }
    Ok(found_inf)
}
