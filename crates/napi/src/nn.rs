//! `NativeLayer`: a layer that runs in the engine (Linear, Conv2d, ..., and
//! Sequential / CausalSelfAttention built from other native layers).

use std::rc::Rc;

use accelerate_core::nn::functional::Padding;
use accelerate_core::nn::layers::Conv2dConfig;
use accelerate_core::nn::{self as core_nn, Layer, Placement};
use napi::bindgen_prelude::Either;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, parse_device, parse_dtype, wrap};
use crate::int::{Int, Ints};
use crate::tensor::Tensor;

// Functional ops, initialisers and parameter state live beside this file.
#[path = "nn_functional.rs"]
mod functional;
#[path = "nn_state.rs"]
mod state;

#[napi]
pub struct NativeLayer {
    layer: Rc<dyn Layer>,
}

fn placement(op: &str, dtype: Option<String>, device: Option<String>) -> accelerate_core::Result<Placement> {
    Ok(Placement {
        kind: parse_dtype(op, dtype.as_deref(), tch::Kind::Float)?,
        device: parse_device(op, device.as_deref())?,
    })
}

/// `[h, w]` from one number or a pair.
fn pair(op: &str, what: &str, v: &Ints) -> accelerate_core::Result<[i64; 2]> {
    let v = v.get(op, what)?;
    match *v {
        [a] => Ok([a, a]),
        [a, b] => Ok([a, b]),
        _ => Err(accelerate_core::Error::invalid(
            op,
            format!("{what} must be a number or a pair, got {v:?}"),
        )),
    }
}

fn native(op: &str, make: impl FnOnce() -> accelerate_core::Result<Rc<dyn Layer>>) -> Result<NativeLayer> {
    guarded(op, || Ok(NativeLayer { layer: make()? }))
}

#[napi]
impl NativeLayer {
    #[napi(factory)]
    pub fn linear(
        in_features: Int,
        out_features: Int,
        bias: bool,
        dtype: Option<String>,
        device: Option<String>,
    ) -> Result<NativeLayer> {
        native("Linear", || {
            let in_features = in_features.positive("Linear", "inFeatures")?;
            let out_features = out_features.positive("Linear", "outFeatures")?;
            let at = placement("Linear", dtype, device)?;
            Ok(Rc::new(core_nn::Linear::new(in_features, out_features, bias, at)?))
        })
    }

    #[napi(factory, js_name = "conv2d")]
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        in_channels: Int,
        out_channels: Int,
        kernel_size: Ints,
        stride: Ints,
        padding: Either<Ints, String>,
        dilation: Ints,
        groups: Int,
        bias: bool,
        dtype: Option<String>,
        device: Option<String>,
    ) -> Result<NativeLayer> {
        const OP: &str = "Conv2d";
        native(OP, || {
            let padding = match padding {
                Either::A(p) => Padding::Explicit(pair(OP, "padding", &p)?.to_vec()),
                Either::B(name) => Padding::parse(OP, &name)?,
            };
            let config = Conv2dConfig {
                kernel_size: pair(OP, "kernelSize", &kernel_size)?,
                stride: pair(OP, "stride", &stride)?,
                padding,
                dilation: pair(OP, "dilation", &dilation)?,
                groups: groups.positive(OP, "groups")?,
                bias,
            };
            let in_channels = in_channels.positive(OP, "inChannels")?;
            let out_channels = out_channels.positive(OP, "outChannels")?;
            let at = placement(OP, dtype, device)?;
            Ok(Rc::new(core_nn::Conv2d::new(in_channels, out_channels, config, at)?))
        })
    }

    #[napi(factory, js_name = "maxPool2d")]
    pub fn max_pool2d(
        kernel_size: Ints,
        stride: Ints,
        padding: Ints,
        dilation: Ints,
        ceil_mode: bool,
    ) -> Result<NativeLayer> {
        const OP: &str = "MaxPool2d";
        native(OP, || {
            Ok(Rc::new(core_nn::MaxPool2d {
                kernel_size: pair(OP, "kernelSize", &kernel_size)?,
                stride: pair(OP, "stride", &stride)?,
                padding: pair(OP, "padding", &padding)?,
                dilation: pair(OP, "dilation", &dilation)?,
                ceil_mode,
            }))
        })
    }

    #[napi(factory)]
    pub fn embedding(
        num_embeddings: Int,
        embedding_dim: Int,
        dtype: Option<String>,
        device: Option<String>,
    ) -> Result<NativeLayer> {
        native("Embedding", || {
            let num_embeddings = num_embeddings.positive("Embedding", "numEmbeddings")?;
            let embedding_dim = embedding_dim.positive("Embedding", "embeddingDim")?;
            let at = placement("Embedding", dtype, device)?;
            Ok(Rc::new(core_nn::Embedding::new(num_embeddings, embedding_dim, at)?))
        })
    }

    #[napi(factory)]
    pub fn layer_norm(
        normalized_shape: Ints,
        eps: f64,
        elementwise_affine: bool,
        bias: bool,
        dtype: Option<String>,
        device: Option<String>,
    ) -> Result<NativeLayer> {
        native("LayerNorm", || {
            let normalized_shape = normalized_shape.get("LayerNorm", "normalizedShape")?;
            let at = placement("LayerNorm", dtype, device)?;
            Ok(Rc::new(core_nn::LayerNorm::new(
                normalized_shape,
                eps,
                elementwise_affine,
                bias,
                at,
            )?))
        })
    }

    #[napi(factory)]
    pub fn dropout(p: f64) -> Result<NativeLayer> {
        native("Dropout", || Ok(Rc::new(core_nn::Dropout::new(p)?)))
    }

    #[napi(factory)]
    pub fn relu() -> NativeLayer {
        NativeLayer {
            layer: Rc::new(core_nn::Relu),
        }
    }

    #[napi(factory)]
    pub fn gelu(approximate: String) -> Result<NativeLayer> {
        native("GELU", || Ok(Rc::new(core_nn::Gelu::new(&approximate)?)))
    }

    #[napi(factory)]
    pub fn flatten(start_dim: Int, end_dim: Int) -> Result<NativeLayer> {
        native("Flatten", || {
            let start_dim = start_dim.get("Flatten", "startDim")?;
            let end_dim = end_dim.get("Flatten", "endDim")?;
            Ok(Rc::new(core_nn::Flatten { start_dim, end_dim }))
        })
    }

    /// Runs `layers` in order in one native call; they stay shared with their own wrappers.
    #[napi(factory)]
    pub fn sequential(layers: Vec<&NativeLayer>) -> NativeLayer {
        let layers = layers.iter().map(|l| l.layer.clone()).collect();
        NativeLayer {
            layer: Rc::new(core_nn::Sequential::new(layers)),
        }
    }

    #[napi(factory)]
    pub fn causal_self_attention(
        dim: Int,
        heads: Int,
        dropout: f64,
        qkv: &NativeLayer,
        proj: &NativeLayer,
    ) -> Result<NativeLayer> {
        native("CausalSelfAttention", || {
            let dim = dim.positive("CausalSelfAttention", "dim")?;
            let heads = heads.positive("CausalSelfAttention", "heads")?;
            Ok(Rc::new(core_nn::CausalSelfAttention::from_parts(
                dim,
                heads,
                dropout,
                qkv.layer.clone(),
                proj.layer.clone(),
            )?))
        })
    }

    /// The PyTorch class name of this layer.
    #[napi(getter)]
    pub fn kind(&self) -> &'static str {
        self.layer.name()
    }

    /// The layer on `x`; with `float32Output` a float16 or bfloat16 output comes as float32.
    #[napi]
    pub fn forward(&self, env: Env, x: Tensor, train: bool, float32_output: Option<bool>) -> Result<Tensor> {
        let op = self.layer.name();
        guarded(op, || {
            let x = &*x.handle.get(op)?;
            let y = if float32_output == Some(true) {
                self.layer.forward_float32(x, train)?
            } else {
                self.layer.forward(x, train)?
            };
            Ok(wrap(&env, y))
        })
    }

    /// Names of this layer's own parameters, absent ones (a bias turned off) included.
    #[napi]
    pub fn parameter_names(&self) -> Vec<&'static str> {
        self.layer.params().into_iter().map(|(n, _)| n).collect()
    }

    /// This layer's own parameters, in `parameterNames()` order (null where absent),
    /// as handles sharing the layer's tensors.
    #[napi]
    pub fn parameters(&self, env: Env) -> Vec<Option<Tensor>> {
        self.layer
            .params()
            .into_iter()
            .map(|(_, p)| p.map(|p| wrap(&env, p.share())))
            .collect()
    }

    /// Makes own parameter `name` share `value` (same shape), e.g. to tie weights.
    #[napi]
    pub fn set_parameter(&self, name: String, value: Tensor) -> Result<()> {
        guarded("setParameter", || {
            self.layer.set_parameter(&name, &*value.handle.get("setParameter")?)
        })
    }
}
