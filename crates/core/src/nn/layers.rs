//! The layers the engine runs natively, initialised as PyTorch does and with
//! PyTorch's parameter names, so checkpoints and seeded runs line up.

use tch::Tensor;

use super::functional::{self as f, Padding};
use super::{init, Layer, Param, Placement};
use crate::{Error, Result};

fn empty(op: &str, shape: &[i64], at: Placement) -> Result<Tensor> {
    Tensor::f_empty(shape, (at.kind, at.device)).map_err(|e| Error::torch(op, vec![shape.to_vec()], e))
}

fn positive(op: &str, what: &str, v: i64) -> Result<()> {
    if v > 0 {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("{what} must be positive, got {v}")))
    }
}

/// PyTorch's default for Linear and Conv: weight kaiming_uniform(a=sqrt(5)), then
/// bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in that order (same random stream).
fn default_weight_and_bias(
    op: &str,
    weight_shape: &[i64],
    bias: bool,
    at: Placement,
) -> Result<(Param, Option<Param>)> {
    let weight = empty(op, weight_shape, at)?;
    init::kaiming_uniform_(&weight, 5f64.sqrt(), init::FanMode::FanIn, "leaky_relu")?;
    let bias = if bias {
        let b = empty(op, &weight_shape[..1], at)?;
        let (fan_in, _) = init::fans(op, &weight)?;
        let bound = if fan_in > 0 { 1.0 / (fan_in as f64).sqrt() } else { 0.0 };
        init::uniform_(&b, -bound, bound)?;
        Some(Param::new(op, b)?)
    } else {
        None
    };
    Ok((Param::new(op, weight)?, bias))
}

/// `y = x W^T + b`.
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    pub fn new(in_features: i64, out_features: i64, bias: bool, at: Placement) -> Result<Linear> {
        const OP: &str = "Linear";
        positive(OP, "inFeatures", in_features)?;
        positive(OP, "outFeatures", out_features)?;
        let (weight, bias) = default_weight_and_bias(OP, &[out_features, in_features], bias, at)?;
        Ok(Linear { weight, bias })
    }
}

impl Layer for Linear {
    fn name(&self) -> &'static str {
        "Linear"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let bias = self.bias.as_ref().map(|b| b.get());
        f::linear_as("Linear", x, &self.weight.get(), bias.as_deref())
    }

    fn linear_weights(&self) -> Vec<Tensor> {
        self.own_parameters().into_iter().map(|(_, p)| p).collect()
    }

    fn link(&self) -> Option<f::Link> {
        Some(f::Link::Linear {
            weight: self.weight.share(),
            bias: self.bias.as_ref().map(Param::share),
        })
    }

    fn params(&self) -> Vec<(&'static str, Option<&Param>)> {
        vec![("weight", Some(&self.weight)), ("bias", self.bias.as_ref())]
    }
}

/// Hyper-parameters of a 2-D convolution (each pair is `[height, width]`).
#[derive(Clone, Debug)]
pub struct Conv2dConfig {
    pub kernel_size: [i64; 2],
    pub stride: [i64; 2],
    pub padding: Padding,
    pub dilation: [i64; 2],
    pub groups: i64,
    pub bias: bool,
}

pub struct Conv2d {
    pub weight: Param,
    pub bias: Option<Param>,
    pub config: Conv2dConfig,
}

impl Conv2d {
    pub fn new(in_channels: i64, out_channels: i64, config: Conv2dConfig, at: Placement) -> Result<Conv2d> {
        const OP: &str = "Conv2d";
        positive(OP, "inChannels", in_channels)?;
        positive(OP, "outChannels", out_channels)?;
        positive(OP, "groups", config.groups)?;
        for (what, pair) in [
            ("kernelSize", config.kernel_size),
            ("stride", config.stride),
            ("dilation", config.dilation),
        ] {
            pair.iter().try_for_each(|&v| positive(OP, what, v))?;
        }
        if in_channels % config.groups != 0 || out_channels % config.groups != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "inChannels ({in_channels}) and outChannels ({out_channels}) must be divisible by groups ({})",
                    config.groups
                ),
            ));
        }
        if matches!(config.padding, Padding::Same) && config.stride != [1, 1] {
            return Err(Error::invalid(OP, "padding \"same\" needs stride 1"));
        }
        let [kh, kw] = config.kernel_size;
        let shape = [out_channels, in_channels / config.groups, kh, kw];
        let (weight, bias) = default_weight_and_bias(OP, &shape, config.bias, at)?;
        Ok(Conv2d { weight, bias, config })
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &'static str {
        "Conv2d"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let c = &self.config;
        let bias = self.bias.as_ref().map(|b| b.get());
        f::conv2d(
            "Conv2d",
            x,
            &self.weight.get(),
            bias.as_deref(),
            &c.stride,
            &c.padding,
            &c.dilation,
            c.groups,
        )
    }

    fn params(&self) -> Vec<(&'static str, Option<&Param>)> {
        vec![("weight", Some(&self.weight)), ("bias", self.bias.as_ref())]
    }
}

pub struct MaxPool2d {
    pub kernel_size: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub ceil_mode: bool,
}

impl Layer for MaxPool2d {
    fn name(&self) -> &'static str {
        "MaxPool2d"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        f::max_pool2d(
            "MaxPool2d",
            x,
            &self.kernel_size,
            &self.stride,
            &self.padding,
            &self.dilation,
            self.ceil_mode,
        )
    }
}

/// A lookup table of `num` vectors of size `dim`, initialised N(0, 1).
pub struct Embedding {
    pub weight: Param,
}

impl Embedding {
    pub fn new(num: i64, dim: i64, at: Placement) -> Result<Embedding> {
        const OP: &str = "Embedding";
        positive(OP, "numEmbeddings", num)?;
        positive(OP, "embeddingDim", dim)?;
        let weight = empty(OP, &[num, dim], at)?;
        init::normal_(&weight, 0.0, 1.0)?;
        Ok(Embedding {
            weight: Param::new(OP, weight)?,
        })
    }
}

impl Layer for Embedding {
    fn name(&self) -> &'static str {
        "Embedding"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        f::embedding("Embedding", &self.weight.get(), x)
    }

    fn params(&self) -> Vec<(&'static str, Option<&Param>)> {
        vec![("weight", Some(&self.weight))]
    }
}

/// Layer normalisation over the trailing `shape`; affine weight ones, bias zeros.
pub struct LayerNorm {
    pub shape: Vec<i64>,
    pub eps: f64,
    pub weight: Option<Param>,
    pub bias: Option<Param>,
}

impl LayerNorm {
    pub fn new(shape: Vec<i64>, eps: f64, elementwise_affine: bool, bias: bool, at: Placement) -> Result<LayerNorm> {
        const OP: &str = "LayerNorm";
        if shape.is_empty() {
            return Err(Error::invalid(OP, "normalizedShape needs at least one dimension"));
        }
        shape
            .iter()
            .try_for_each(|&d| positive(OP, "every normalizedShape dimension", d))?;
        let make = |fill: fn(&Tensor) -> Result<()>| -> Result<Param> {
            let t = empty(OP, &shape, at)?;
            fill(&t)?;
            Param::new(OP, t)
        };
        let weight = if elementwise_affine {
            Some(make(init::ones_)?)
        } else {
            None
        };
        let bias = if elementwise_affine && bias {
            Some(make(init::zeros_)?)
        } else {
            None
        };
        Ok(LayerNorm {
            shape,
            eps,
            weight,
            bias,
        })
    }
}

impl Layer for LayerNorm {
    fn name(&self) -> &'static str {
        "LayerNorm"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let weight = self.weight.as_ref().map(|w| w.get());
        let bias = self.bias.as_ref().map(|b| b.get());
        f::layer_norm(
            "LayerNorm",
            x,
            &self.shape,
            weight.as_deref(),
            bias.as_deref(),
            self.eps,
        )
    }

    fn params(&self) -> Vec<(&'static str, Option<&Param>)> {
        vec![("weight", self.weight.as_ref()), ("bias", self.bias.as_ref())]
    }
}

pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Dropout> {
        f::check_probability("Dropout", p)?;
        Ok(Dropout { p })
    }
}

impl Layer for Dropout {
    fn name(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        f::dropout_as("Dropout", x, self.p, train)
    }
}

pub struct Relu;

impl Layer for Relu {
    fn name(&self) -> &'static str {
        "ReLU"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        f::relu(x)
    }

    fn link(&self) -> Option<f::Link> {
        Some(f::Link::Relu)
    }
}

pub struct Gelu {
    approximate: String,
}

impl Gelu {
    pub fn new(approximate: &str) -> Result<Gelu> {
        f::gelu_approximation("GELU", approximate)?;
        Ok(Gelu {
            approximate: approximate.to_string(),
        })
    }
}

impl Layer for Gelu {
    fn name(&self) -> &'static str {
        "GELU"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        f::gelu(x, &self.approximate)
    }
}

pub struct Flatten {
    pub start_dim: i64,
    pub end_dim: i64,
}

impl Layer for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        x.f_flatten(self.start_dim, self.end_dim)
            .map_err(|e| Error::torch("Flatten", vec![x.size()], e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn linear_init_matches_pytorch_bitwise() -> Result<()> {
        // torch.manual_seed(0); l = torch.nn.Linear(3, 2)
        // l.weight.tolist() -> [[-0.004322517663240433, 0.3097158372402191, -0.4751853346824646],
        //                       [-0.4248946011066437, -0.2223689705133438, 0.15482072532176971]]
        // l.bias.tolist() -> [-0.011439144611358643, 0.45777493715286255]
        let _rng = crate::nn::rng_lock();
        tch::manual_seed(0);
        let l = Linear::new(3, 2, true, Placement::default())?;
        let w = Tensor::from_slice(&[
            -0.004_322_517_7f32,
            0.309_715_84,
            -0.475_185_33,
            -0.424_894_6,
            -0.222_368_97,
            0.154_820_73,
        ])
        .reshape([2, 3]);
        assert!(l.weight.get().allclose(&w, 0.0, 1e-7, false));
        let b = Tensor::from_slice(&[-0.011_439_145f32, 0.457_774_94]);
        assert!(l.bias.as_ref().is_some_and(|p| p.get().allclose(&b, 0.0, 1e-7, false)));
        Ok(())
    }

    #[test]
    fn linear_rejects_wrong_features() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        let l = Linear::new(4, 2, false, Placement::default())?;
        let x = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        let msg = l.forward(&x, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("Linear: input of shape [5, 3] does not fit weight of shape [2, 4]"),
            "{msg}"
        );
        assert_eq!(l.own_parameters().len(), 1);
        Ok(())
    }

    #[test]
    fn layer_norm_checks_trailing_shape() -> Result<()> {
        let ln = LayerNorm::new(vec![4], 1e-5, true, true, Placement::default())?;
        let x = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        let msg = ln.forward(&x, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            msg,
            "LayerNorm: input of shape [2, 5] does not end with the normalized shape [4]"
        );
        Ok(())
    }

    #[test]
    fn set_parameter_ties_weights() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        let a = Embedding::new(5, 3, Placement::default())?;
        let head = Linear::new(3, 5, false, Placement::default())?;
        head.set_parameter("weight", &a.weight.get())?;
        let shared = a.weight.share();
        let _ = tch::no_grad(|| shared.shallow_clone().fill_(2.0));
        assert_eq!(head.weight.get().double_value(&[4, 2]), 2.0);
        assert!(head.set_parameter("bias", &shared).is_err());
        Ok(())
    }
}
