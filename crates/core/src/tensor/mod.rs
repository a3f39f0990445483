//! Tensor creation, conversion to host memory, and the operations exposed to users.

pub mod ops;

use crate::{dtype, Error, Result};
use tch::{Device, Kind, Tensor};

/// The shapes of `tensors`, for error messages.
pub fn shapes(tensors: &[&Tensor]) -> Vec<Vec<i64>> {
    tensors.iter().map(|t| t.size()).collect()
}

fn check_shape(op: &str, shape: &[i64]) -> Result<()> {
    if let Some(bad) = shape.iter().find(|&&d| d < 0) {
        return Err(Error::invalid(
            op,
            format!("shape {shape:?} has a negative dimension {bad}"),
        ));
    }
    Ok(())
}

/// Builds a tensor from raw little-endian elements of `source` kind (one copy), then
/// converts it to `target` and moves it to `device`.
pub fn from_bytes(op: &str, bytes: &[u8], shape: &[i64], source: Kind, target: Kind, device: Device) -> Result<Tensor> {
    check_shape(op, shape)?;
    let numel: i64 = shape.iter().product();
    let expected = numel as usize * dtype::element_size(source);
    if bytes.len() != expected {
        return Err(Error::invalid(
            op,
            format!(
                "{} elements given for shape {shape:?}, which needs {numel}",
                bytes.len() / dtype::element_size(source)
            ),
        ));
    }
    if source == Kind::Double && !dtype::is_floating(target) && target != Kind::Bool {
        for chunk in bytes.chunks_exact(8) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(chunk);
            check_fill(op, f64::from_le_bytes(raw), target).map_err(|_| {
                Error::invalid(
                    op,
                    format!(
                        "the value {} cannot be converted to {} without overflow",
                        f64::from_le_bytes(raw),
                        dtype::name(target)
                    ),
                )
            })?;
        }
    }
    let t = Tensor::f_from_data_size(bytes, shape, source).map_err(|e| Error::torch(op, vec![shape.to_vec()], e))?;
    convert(op, t, target, device)
}

/// Converts kind and device, skipping what is already right.
pub fn convert(op: &str, t: Tensor, kind: Kind, device: Device) -> Result<Tensor> {
    let t = if t.kind() == kind {
        t
    } else {
        t.f_to_kind(kind).map_err(|e| Error::torch(op, shapes(&[&t]), e))?
    };
    if t.device() == device {
        return Ok(t);
    }
    t.f_to_device(device).map_err(|e| Error::torch(op, shapes(&[&t]), e))
}

pub enum Fill {
    Zeros,
    Ones,
    Value(f64),
    Normal,
    Uniform,
}

pub fn filled(op: &str, shape: &[i64], fill: Fill, kind: Kind, device: Device) -> Result<Tensor> {
    check_shape(op, shape)?;
    let options = (kind, device);
    let result = match fill {
        Fill::Zeros => Tensor::f_zeros(shape, options),
        Fill::Ones => Tensor::f_ones(shape, options),
        Fill::Value(v) => {
            check_fill(op, v, kind)?;
            Tensor::f_full(shape, ops::scalar(v), options)
        }
        Fill::Normal | Fill::Uniform if !dtype::is_floating(kind) => {
            return Err(Error::invalid(
                op,
                format!("needs a floating-point dtype, got {}", dtype::name(kind)),
            ))
        }
        Fill::Normal => Tensor::f_randn(shape, options),
        Fill::Uniform => Tensor::f_rand(shape, options),
    };
    result.map_err(|e| Error::torch(op, vec![shape.to_vec()], e))
}

/// Refuses a fill value that `kind` cannot hold, as PyTorch's `full` does ("value
/// cannot be converted to type uint8_t without overflow"), instead of wrapping it.
pub fn check_fill(op: &str, value: f64, kind: Kind) -> Result<()> {
    let range = match kind {
        Kind::Uint8 => Some((0.0, 255.0)),
        Kind::Int8 => Some((-128.0, 127.0)),
        Kind::Int16 => Some((-32768.0, 32767.0)),
        Kind::Int => Some((-2147483648.0, 2147483647.0)),
        Kind::Int64 => Some((-9.223372036854776e18, 9.223372036854775e18)),
        Kind::Half => Some((-65504.0, 65504.0)),
        Kind::BFloat16 | Kind::Float => Some((-3.4028234663852886e38, 3.4028234663852886e38)),
        _ => None,
    };
    let Some((low, high)) = range else { return Ok(()) };
    let is_float = dtype::is_floating(kind);
    let fits = if is_float {
        !value.is_finite() || (low..=high).contains(&value)
    } else {
        value.is_finite() && (low..=high).contains(&value.trunc())
    };
    if fits {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!(
            "the fill value {value} cannot be converted to {} without overflow",
            dtype::name(kind)
        ),
    ))
}

/// Values from `start` up to (not including) `end` by `step`.
pub fn arange(start: f64, end: f64, step: f64, kind: Kind, device: Device) -> Result<Tensor> {
    if step == 0.0 || !step.is_finite() {
        return Err(Error::invalid(
            "arange",
            format!("step must be a finite non-zero number, got {step}"),
        ));
    }
    if !start.is_finite() || !end.is_finite() {
        return Err(Error::invalid(
            "arange",
            format!("start and end must be finite numbers, got {start} and {end}"),
        ));
    }
    if (end - start) * step < 0.0 {
        return Err(Error::invalid(
            "arange",
            format!("step {step} never leads from start {start} to end {end}; use a step of the other sign"),
        ));
    }
    let count = ((end - start) / step).ceil();
    if count > (1u64 << 53) as f64 {
        return Err(Error::invalid(
            "arange",
            format!("[{start}, {end}) by {step} has {count} elements, too many to allocate"),
        ));
    }
    Tensor::f_arange_start_step(ops::scalar(start), ops::scalar(end), ops::scalar(step), (kind, device))
        .map_err(|e| Error::torch("arange", vec![], e))
}

/// arange's dtype when none is given: int64 when start, end and step are all integers, else float32 (as PyTorch).
pub fn arange_default_kind(start: f64, end: f64, step: f64) -> Kind {
    if [start, end, step].iter().all(|v| v.fract() == 0.0) {
        Kind::Int64
    } else {
        Kind::Float
    }
}

/// Integers drawn uniformly from `[low, high)`.
pub fn randint(low: i64, high: i64, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
    check_shape("randint", shape)?;
    if high <= low {
        return Err(Error::invalid(
            "randint",
            format!("high ({high}) must be greater than low ({low})"),
        ));
    }
    Tensor::f_randint_low(low, high, shape, (kind, device))
        .map_err(|e| Error::torch("randint", vec![shape.to_vec()], e))
}

pub fn manual_seed(seed: i64) {
    tch::manual_seed(seed);
}

/// The elements in row-major order as raw bytes of the tensor's own kind, copied to the host.
pub fn to_bytes(op: &str, t: &Tensor) -> Result<Vec<u8>> {
    let fail = |e| Error::torch(op, shapes(&[t]), e);
    let host = t
        .f_detach()
        .map_err(fail)?
        .f_to_device(Device::Cpu)
        .map_err(fail)?
        .f_contiguous()
        .map_err(fail)?;
    let numel = host.numel();
    let mut bytes = vec![0u8; numel * dtype::element_size(host.kind())];
    host.f_copy_data_u8(&mut bytes, numel).map_err(fail)?;
    Ok(bytes)
}

/// The value of a one-element tensor.
pub fn item(t: &Tensor) -> Result<f64> {
    if t.numel() != 1 {
        return Err(Error::invalid(
            "item",
            format!("needs a tensor with one element, got shape {:?}", t.size()),
        ));
    }
    let flat = t.f_reshape([1]).map_err(|e| Error::torch("item", shapes(&[t]), e))?;
    flat.f_double_value(&[0])
        .map_err(|e| Error::torch("item", shapes(&[t]), e))
}

/// Turns gradient recording on or off for this thread; returns the previous setting.
pub fn set_grad_enabled(enabled: bool) -> bool {
    // SAFETY: a plain flag setter in libtorch's C API; it cannot fail.
    unsafe { torch_sys::at_grad_set_enabled(i32::from(enabled)) != 0 }
}

pub fn is_grad_enabled() -> bool {
    let previous = set_grad_enabled(true);
    set_grad_enabled(previous);
    previous
}

/// Accumulates gradients of `output` into the leaves, as `torch.autograd.backward`;
/// a non-scalar `output` needs a `gradient` of its shape.
pub fn backward(output: &Tensor, gradient: Option<&Tensor>) -> Result<()> {
    if gradient.is_none() && output.numel() != 1 {
        let shape = output.size();
        return Err(Error::invalid(
            "backward",
            format!("needs a gradient for a non-scalar tensor of shape {shape:?}"),
        ));
    }
    crate::shim::backward("backward", output, gradient)
}
