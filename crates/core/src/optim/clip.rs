//! Gradient clipping, as torch.nn.utils.clip_grad_norm_ and clip_grad_value_ (foreach
//! kernels per device and dtype). Parameters without gradients are skipped.

use super::kernels;
use crate::{tensor, Error, Result};
use tch::Tensor;

/// Scales the gradients of `params` so that their total `norm_type` norm is at most
/// `max_norm`, and returns the total norm before clipping. `norm_type` may be infinite.
pub fn clip_grad_norm(params: &[&Tensor], max_norm: f64, norm_type: f64, error_if_nonfinite: bool) -> Result<f64> {
    let op = "clipGradNorm";
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid(
            op,
            format!("maxNorm must be a number >= 0, got {max_norm}"),
        ));
    }
    if norm_type.is_nan() {
        return Err(Error::invalid(op, "normType must be a number, got NaN"));
    }
    let total = kernels::total_grad_norm(op, params, norm_type)?;
    let value = tensor::item(&total)?;
    if error_if_nonfinite && !value.is_finite() {
        return Err(Error::invalid(
            op,
            format!(
                "the total norm of order {norm_type} of the gradients is {value}, so it cannot be clipped; \
                 pass errorIfNonfinite = false to scale the gradients by it anyway"
            ),
        ));
    }
    kernels::clip_grads_with_norm(op, params, max_norm, &total)?;
    Ok(value)
}

/// Clamps every gradient element of `params` into [-value, value].
pub fn clip_grad_value(params: &[&Tensor], value: f64) -> Result<()> {
    let op = "clipGradValue";
    if value.is_nan() || value < 0.0 {
        return Err(Error::invalid(
            op,
            format!("clipValue must be a number >= 0, got {value}"),
        ));
    }
    kernels::clip_grad_value(op, params, value)
}
