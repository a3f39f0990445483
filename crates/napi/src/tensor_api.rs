//! The hand-written part of the tensor API: properties, conversion to host
//! memory, autograd and disposal. Prefixes tell ts/tensor.ts how to install each
//! function: tensorGet* (getter), tensorCall* (method), tensorOp* (method
//! returning a tensor), tensorList* (method returning tensors).

use accelerate_core::tensor::{self as core_tensor, ops};
use accelerate_core::{device, dtype};
use napi::bindgen_prelude::Buffer;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, handle, handles, parse_device, parse_dtype, with_operand, wrap};
use crate::fast::fast_exports;
use crate::int::{Checked, Dims, Int};
use crate::tensor::{Tensor, TensorArg, TensorHandle, TensorOrNumber};

fast_exports!(FAST = [
    tensor_get_shape(TensorArg),
    tensor_get_dtype(TensorArg),
    tensor_get_device(TensorArg),
    tensor_get_ndim(TensorArg),
    tensor_get_numel(TensorArg),
    tensor_get_is_disposed(TensorArg),
    tensor_get_grad[env](TensorArg),
    tensor_requires_grad(TensorArg),
    tensor_set_requires_grad(TensorArg, bool),
    tensor_call_item(TensorArg),
    tensor_call_backward(TensorArg, Option<TensorArg>),
    tensor_op_to[env](TensorArg, Option<String>, Option<String>),
    tensor_op_detach[env](TensorArg),
    tensor_op_index[env](TensorArg, TensorOrNumber),
]);

#[napi]
pub fn tensor_get_shape(tensor: TensorArg) -> Result<Vec<i64>> {
    guarded("shape", || Ok(tensor.handle.peek("shape")?.size()))
}

#[napi]
pub fn tensor_get_dtype(tensor: TensorArg) -> Result<&'static str> {
    guarded("dtype", || Ok(dtype::name(tensor.handle.peek("dtype")?.kind())))
}

#[napi]
pub fn tensor_get_device(tensor: TensorArg) -> Result<String> {
    guarded("device", || Ok(device::name(tensor.handle.peek("device")?.device())))
}

#[napi]
pub fn tensor_get_ndim(tensor: TensorArg) -> Result<i64> {
    guarded("ndim", || Ok(tensor.handle.peek("ndim")?.dim() as i64))
}

#[napi]
pub fn tensor_get_numel(tensor: TensorArg) -> Result<i64> {
    guarded("numel", || Ok(tensor.handle.peek("numel")?.numel() as i64))
}

#[napi]
pub fn tensor_get_is_disposed(tensor: TensorArg) -> Result<bool> {
    Ok(tensor.handle.is_disposed())
}

/// The accumulated gradient, or null before any backward pass reached this tensor.
#[napi]
pub fn tensor_get_grad(env: Env, tensor: TensorArg) -> Result<Option<TensorHandle>> {
    guarded("grad", || {
        let g = ops::unary("grad", &*tensor.handle.peek("grad")?, |t| t.f_grad())?;
        Ok(g.defined().then(|| handle(&env, g)))
    })
}

#[napi]
pub fn tensor_requires_grad(tensor: TensorArg) -> Result<bool> {
    guarded("requiresGrad", || {
        Ok(tensor.handle.peek("requiresGrad")?.requires_grad())
    })
}

#[napi]
pub fn tensor_set_requires_grad(tensor: TensorArg, value: bool) -> Result<()> {
    guarded("requiresGrad", || {
        let t = tensor.handle.peek("requiresGrad")?;
        ops::unary("requiresGrad", &t, |t| t.f_set_requires_grad(value)).map(drop)
    })
}

/// The value of a one-element tensor as a number (booleans as 0 or 1).
#[napi]
pub fn tensor_call_item(tensor: TensorArg) -> Result<f64> {
    guarded("item", || core_tensor::item(&*tensor.handle.get("item")?))
}

/// The elements in row-major order as raw bytes of this tensor's dtype (copied to the host).
#[napi]
pub fn tensor_call_to_bytes(tensor: TensorArg) -> Result<Buffer> {
    guarded("toBytes", || {
        Ok(core_tensor::to_bytes("toBytes", &*tensor.handle.get("toBytes")?)?.into())
    })
}

/// A tensor sharing this one's storage, out of the autograd graph. It reads no data, so a
/// parameter ZeRO stage 3 released may be detached (its uses then say it is sharded).
#[napi]
pub fn tensor_op_detach(env: Env, tensor: TensorArg) -> Result<TensorHandle> {
    guarded("detach", || {
        let t = tensor.handle.peek("detach")?;
        Ok(handle(&env, ops::unary("detach", &t, |t| t.f_detach())?))
    })
}

/// Back-propagates from this tensor; a non-scalar needs `gradient` of its shape.
#[napi]
pub fn tensor_call_backward(tensor: TensorArg, gradient: Option<TensorArg>) -> Result<()> {
    guarded("backward", || {
        let t = tensor.handle.get("backward")?;
        match gradient {
            Some(g) => core_tensor::backward(&t, Some(&*g.handle.get("backward")?)),
            None => core_tensor::backward(&t, None),
        }
    })
}

/// A copy converted to `dtype` and/or moved to `device` (the same values when nothing changes).
#[napi]
pub fn tensor_op_to(
    env: Env,
    tensor: TensorArg,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<TensorHandle> {
    guarded("to", || {
        let t = tensor.handle.get("to")?;
        let kind = parse_dtype("to", dtype.as_deref(), t.kind())?;
        let device = device.as_deref().map_or(Ok(t.device()), |d| device::parse("to", d))?;
        Ok(handle(
            &env,
            core_tensor::convert("to", t.shallow_clone(), kind, device)?,
        ))
    })
}

/// `t[i]`: an integer selects along dim 0; a tensor of indices or a boolean mask gathers.
#[napi]
pub fn tensor_op_index(env: Env, tensor: TensorArg, i: TensorOrNumber) -> Result<TensorHandle> {
    guarded("index", || {
        let t = tensor.handle.get("index")?;
        Ok(handle(&env, with_operand("index", &i, |i| ops::index(&t, i))?))
    })
}

/// Pieces of `size` (or of each size in a list) along `dim`.
#[napi]
pub fn tensor_list_split(env: Env, tensor: TensorArg, size: Dims, dim: Option<Int>) -> Result<Vec<TensorHandle>> {
    guarded("split", || {
        let sizes = size.get("split", "size")?;
        let dim = dim.checked("split", "dim")?.unwrap_or(0);
        Ok(handles(&env, ops::split(&*tensor.handle.get("split")?, &sizes, dim)?))
    })
}

#[napi]
pub fn tensor_list_chunk(env: Env, tensor: TensorArg, chunks: Int, dim: Option<Int>) -> Result<Vec<TensorHandle>> {
    guarded("chunk", || {
        let chunks = chunks.positive("chunk", "chunks")?;
        let dim = dim.checked("chunk", "dim")?.unwrap_or(0);
        Ok(handles(&env, ops::chunk(&*tensor.handle.get("chunk")?, chunks, dim)?))
    })
}

/// Creates a tensor from raw elements of `sourceDtype`, converted to `dtype` on `device`.
#[napi]
pub fn from_bytes(
    env: Env,
    bytes: &[u8],
    shape: crate::int::Ints,
    source_dtype: String,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<Tensor> {
    guarded("tensor", || {
        let shape = shape.shape("tensor", "shape")?;
        let source = accelerate_core::dtype::parse("tensor", &source_dtype)?;
        let target = parse_dtype("tensor", dtype.as_deref(), source)?;
        let device = parse_device("tensor", device.as_deref())?;
        Ok(wrap(
            &env,
            core_tensor::from_bytes("tensor", bytes, &shape, source, target, device)?,
        ))
    })
}
