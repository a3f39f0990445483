//! Functions that create tensors: filled, ranges and random.

use accelerate_core::tensor::{self as core_tensor, Fill};
use napi::{Env, Result};
use napi_derive::napi;
use tch::Kind;

use crate::convert::{guarded, parse_device, parse_dtype, wrap};
use crate::int::{Int, Ints};
use crate::tensor::Tensor;

fn filled(
    env: &Env,
    op: &str,
    shape: Ints,
    fill: Fill,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<Tensor> {
    guarded(op, || {
        let shape = shape.sizes(op, "shape")?;
        let kind = parse_dtype(op, dtype.as_deref(), Kind::Float)?;
        Ok(wrap(
            env,
            core_tensor::filled(op, &shape, fill, kind, parse_device(op, device.as_deref())?)?,
        ))
    })
}

#[napi]
pub fn zeros(env: Env, shape: Ints, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
    filled(&env, "zeros", shape, Fill::Zeros, dtype, device)
}

#[napi]
pub fn ones(env: Env, shape: Ints, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
    filled(&env, "ones", shape, Fill::Ones, dtype, device)
}

#[napi]
pub fn full(env: Env, shape: Ints, value: f64, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
    filled(&env, "full", shape, Fill::Value(value), dtype, device)
}

/// Standard normal samples.
#[napi]
pub fn randn(env: Env, shape: Ints, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
    filled(&env, "randn", shape, Fill::Normal, dtype, device)
}

/// Uniform samples in [0, 1).
#[napi]
pub fn rand(env: Env, shape: Ints, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
    filled(&env, "rand", shape, Fill::Uniform, dtype, device)
}

/// `[start, end)` by `step`; int64 when all three are integers, else float32.
#[napi]
pub fn arange(
    env: Env,
    start: f64,
    end: f64,
    step: Option<f64>,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<Tensor> {
    guarded("arange", || {
        let step = step.unwrap_or(1.0);
        let kind = parse_dtype(
            "arange",
            dtype.as_deref(),
            core_tensor::arange_default_kind(start, end, step),
        )?;
        Ok(wrap(
            &env,
            core_tensor::arange(start, end, step, kind, parse_device("arange", device.as_deref())?)?,
        ))
    })
}

/// Integers drawn uniformly from `[low, high)`, int64 unless `dtype` says otherwise.
#[napi]
pub fn randint(
    env: Env,
    low: Int,
    high: Int,
    shape: Ints,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<Tensor> {
    guarded("randint", || {
        let (low, high) = (low.get("randint", "low")?, high.get("randint", "high")?);
        let shape = shape.sizes("randint", "shape")?;
        let kind = parse_dtype("randint", dtype.as_deref(), Kind::Int64)?;
        Ok(wrap(
            &env,
            core_tensor::randint(low, high, &shape, kind, parse_device("randint", device.as_deref())?)?,
        ))
    })
}
