//! `nn.functional` and `nn.init` bindings: losses, activations, attention, initialisers.

use accelerate_core::nn::functional as f;
use accelerate_core::nn::init;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, wrap};
use crate::tensor::Tensor;

#[napi]
pub fn nn_cross_entropy(
    env: Env,
    logits: Tensor,
    target: Tensor,
    reduction: Option<String>,
    label_smoothing: Option<f64>,
    ignore_index: Option<crate::int::Int>,
) -> Result<Tensor> {
    const OP: &str = "crossEntropy";
    guarded(OP, || {
        let reduction = f::reduction(OP, reduction.as_deref().unwrap_or("mean"))?;
        let (l, t) = (logits.handle.get(OP)?, target.handle.get(OP)?);
        let out = f::cross_entropy(
            &l,
            &t,
            reduction,
            label_smoothing.unwrap_or(0.0),
            ignore_index
                .map(|i| i.get(OP, "ignoreIndex"))
                .transpose()?
                .unwrap_or(-100),
        )?;
        Ok(wrap(&env, out))
    })
}

/// Linear layer and cross-entropy in one, in chunks of rows (mean over rows not ignored).
#[napi]
pub fn nn_linear_cross_entropy(
    env: Env,
    input: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: Option<crate::int::Int>,
    chunk_rows: Option<crate::int::Int>,
) -> Result<Tensor> {
    const OP: &str = "linearCrossEntropy";
    guarded(OP, || {
        let ignore_index = ignore_index
            .map(|i| i.get(OP, "ignoreIndex"))
            .transpose()?
            .unwrap_or(-100);
        let chunk_rows = chunk_rows
            .map(|i| i.get(OP, "chunkRows"))
            .transpose()?
            .unwrap_or(f::LINEAR_CROSS_ENTROPY_CHUNK_ROWS);
        let (x, w, t) = (input.handle.get(OP)?, weight.handle.get(OP)?, targets.handle.get(OP)?);
        Ok(wrap(
            &env,
            f::linear_cross_entropy(&x, &w, &t, ignore_index, chunk_rows)?,
        ))
    })
}

#[napi]
pub fn nn_mse_loss(env: Env, input: Tensor, target: Tensor, reduction: Option<String>) -> Result<Tensor> {
    const OP: &str = "mseLoss";
    guarded(OP, || {
        let reduction = f::reduction(OP, reduction.as_deref().unwrap_or("mean"))?;
        let out = f::mse_loss(&*input.handle.get(OP)?, &*target.handle.get(OP)?, reduction)?;
        Ok(wrap(&env, out))
    })
}

#[napi]
pub fn nn_softmax(env: Env, x: Tensor, dim: crate::int::Int) -> Result<Tensor> {
    guarded("softmax", || {
        let dim = dim.get("softmax", "dim")?;
        Ok(wrap(&env, f::softmax(&*x.handle.get("softmax")?, dim)?))
    })
}

#[napi]
pub fn nn_log_softmax(env: Env, x: Tensor, dim: crate::int::Int) -> Result<Tensor> {
    guarded("logSoftmax", || {
        let dim = dim.get("logSoftmax", "dim")?;
        Ok(wrap(&env, f::log_softmax(&*x.handle.get("logSoftmax")?, dim)?))
    })
}

#[napi]
pub fn nn_relu(env: Env, x: Tensor) -> Result<Tensor> {
    guarded("relu", || Ok(wrap(&env, f::relu(&*x.handle.get("relu")?)?)))
}

#[napi]
pub fn nn_gelu(env: Env, x: Tensor, approximate: Option<String>) -> Result<Tensor> {
    guarded("gelu", || {
        let approximate = approximate.as_deref().unwrap_or("none");
        Ok(wrap(&env, f::gelu(&*x.handle.get("gelu")?, approximate)?))
    })
}

#[napi]
pub fn nn_dropout(env: Env, x: Tensor, p: f64, training: bool) -> Result<Tensor> {
    guarded("dropout", || {
        Ok(wrap(&env, f::dropout(&*x.handle.get("dropout")?, p, training)?))
    })
}

#[napi]
#[allow(clippy::too_many_arguments)]
pub fn nn_scaled_dot_product_attention(
    env: Env,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Option<Tensor>,
    dropout_p: Option<f64>,
    is_causal: Option<bool>,
    scale: Option<f64>,
) -> Result<Tensor> {
    const OP: &str = "scaledDotProductAttention";
    guarded(OP, || {
        let (q, k, v) = (q.handle.get(OP)?, k.handle.get(OP)?, v.handle.get(OP)?);
        let mask = attn_mask.as_ref().map(|m| m.handle.get(OP)).transpose()?;
        let out = f::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask.as_deref(),
            dropout_p.unwrap_or(0.0),
            is_causal.unwrap_or(false),
            scale,
        )?;
        Ok(wrap(&env, out))
    })
}

#[napi]
pub fn nn_linear(env: Env, x: Tensor, weight: Tensor, bias: Option<Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    guarded(OP, || {
        let bias = bias.as_ref().map(|b| b.handle.get(OP)).transpose()?;
        let out = f::linear(&*x.handle.get(OP)?, &*weight.handle.get(OP)?, bias.as_deref())?;
        Ok(wrap(&env, out))
    })
}

/// `linear(gelu(x), weight, bias)` whose backward recomputes the GELU.
#[napi]
pub fn nn_gelu_linear(
    env: Env,
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    approximate: Option<String>,
) -> Result<Tensor> {
    const OP: &str = "geluLinear";
    guarded(OP, || {
        let bias = bias.as_ref().map(|b| b.handle.get(OP)).transpose()?;
        let approximate = approximate.as_deref().unwrap_or("none");
        let out = f::gelu_linear(
            &*x.handle.get(OP)?,
            &*weight.handle.get(OP)?,
            bias.as_deref(),
            approximate,
        )?;
        Ok(wrap(&env, out))
    })
}

/// `[residual + x, layerNorm(residual + x)]` over the last dimension, fused on a GPU.
#[napi]
pub fn nn_add_layer_norm(
    env: Env,
    residual: Tensor,
    x: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: Option<f64>,
) -> Result<Vec<Tensor>> {
    const OP: &str = "addLayerNorm";
    guarded(OP, || {
        let weight = weight.as_ref().map(|w| w.handle.get(OP)).transpose()?;
        let bias = bias.as_ref().map(|b| b.handle.get(OP)).transpose()?;
        let (sum, normed) = f::add_layer_norm(
            &*residual.handle.get(OP)?,
            &*x.handle.get(OP)?,
            weight.as_deref(),
            bias.as_deref(),
            eps.unwrap_or(1e-5),
        )?;
        Ok(crate::convert::wrap_all(&env, vec![sum, normed]))
    })
}

#[napi]
pub fn nn_init_kaiming_uniform(t: Tensor, a: f64, mode: String, nonlinearity: String) -> Result<()> {
    const OP: &str = "kaimingUniform_";
    guarded(OP, || {
        init::kaiming_uniform_(&*t.handle.get(OP)?, a, init::FanMode::parse(OP, &mode)?, &nonlinearity)
    })
}

#[napi]
pub fn nn_init_kaiming_normal(t: Tensor, a: f64, mode: String, nonlinearity: String) -> Result<()> {
    const OP: &str = "kaimingNormal_";
    guarded(OP, || {
        init::kaiming_normal_(&*t.handle.get(OP)?, a, init::FanMode::parse(OP, &mode)?, &nonlinearity)
    })
}

#[napi]
pub fn nn_init_xavier_uniform(t: Tensor, gain: f64) -> Result<()> {
    guarded("xavierUniform_", || {
        init::xavier_uniform_(&*t.handle.get("xavierUniform_")?, gain)
    })
}

#[napi]
pub fn nn_init_xavier_normal(t: Tensor, gain: f64) -> Result<()> {
    guarded("xavierNormal_", || {
        init::xavier_normal_(&*t.handle.get("xavierNormal_")?, gain)
    })
}

#[napi]
pub fn nn_init_normal(t: Tensor, mean: f64, std: f64) -> Result<()> {
    guarded("normal_", || init::normal_(&*t.handle.get("normal_")?, mean, std))
}

#[napi]
pub fn nn_init_uniform(t: Tensor, low: f64, high: f64) -> Result<()> {
    guarded("uniform_", || init::uniform_(&*t.handle.get("uniform_")?, low, high))
}

#[napi]
pub fn nn_init_constant(t: Tensor, value: f64) -> Result<()> {
    guarded("constant_", || init::constant_(&*t.handle.get("constant_")?, value))
}

/// PyTorch's `calculate_gain(nonlinearity, param)`.
#[napi]
pub fn nn_init_gain(nonlinearity: String, param: Option<f64>) -> Result<f64> {
    guarded("calculateGain", || init::gain("calculateGain", &nonlinearity, param))
}
