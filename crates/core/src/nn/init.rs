//! Parameter initialisers (PyTorch's `torch.nn.init`): each fills a tensor in place
//! without recording gradients, drawing from the default generator in the same order
//! as PyTorch, so a seeded model starts from the same weights.

use tch::Tensor;

use crate::tensor::{ops::scalar, shapes};
use crate::{Error, Result};

/// Which fan Kaiming initialisation preserves: the forward pass's or the backward pass's.
#[derive(Clone, Copy, Debug)]
pub enum FanMode {
    FanIn,
    FanOut,
}

impl FanMode {
    pub fn parse(op: &str, name: &str) -> Result<FanMode> {
        match name {
            "fanIn" | "fan_in" => Ok(FanMode::FanIn),
            "fanOut" | "fan_out" => Ok(FanMode::FanOut),
            _ => Err(Error::invalid(
                op,
                format!("unknown mode \"{name}\" (expected \"fanIn\" or \"fanOut\")"),
            )),
        }
    }
}

/// `(fan_in, fan_out)` of a weight `[out, in, *kernel]`, as PyTorch computes them.
pub fn fans(op: &str, t: &Tensor) -> Result<(i64, i64)> {
    let size = t.size();
    if size.len() < 2 {
        return Err(Error::invalid(
            op,
            format!("fan in and fan out need a tensor with at least 2 dimensions, got shape {size:?}"),
        ));
    }
    let receptive: i64 = size[2..].iter().product();
    Ok((size[1] * receptive, size[0] * receptive))
}

/// PyTorch's `calculate_gain(nonlinearity, param)`.
pub fn gain(op: &str, nonlinearity: &str, param: Option<f64>) -> Result<f64> {
    Ok(match nonlinearity {
        "linear" | "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | "conv_transpose2d"
        | "conv_transpose3d" | "sigmoid" => 1.0,
        "tanh" => 5.0 / 3.0,
        "relu" => 2f64.sqrt(),
        "leaky_relu" | "leakyRelu" => {
            let slope = param.unwrap_or(0.01);
            (2.0 / (1.0 + slope * slope)).sqrt()
        }
        "selu" => 0.75,
        _ => {
            return Err(Error::invalid(
                op,
                format!("unsupported nonlinearity \"{nonlinearity}\" (expected linear, sigmoid, tanh, relu, leaky_relu or selu)"),
            ))
        }
    })
}

/// Runs an in-place fill on a shallow clone under no_grad.
fn fill(op: &str, t: &Tensor, f: impl FnOnce(&mut Tensor) -> std::result::Result<Tensor, tch::TchError>) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut alias = t.shallow_clone();
    f(&mut alias).map(drop).map_err(|e| Error::torch(op, shapes(&[t]), e))
}

pub fn uniform_(t: &Tensor, low: f64, high: f64) -> Result<()> {
    if low > high {
        return Err(Error::invalid(
            "uniform_",
            format!("needs low <= high, got {low} and {high}"),
        ));
    }
    fill("uniform_", t, |t| t.f_uniform_(low, high))
}

pub fn normal_(t: &Tensor, mean: f64, std: f64) -> Result<()> {
    if std < 0.0 {
        return Err(Error::invalid(
            "normal_",
            format!("std must be non-negative, got {std}"),
        ));
    }
    fill("normal_", t, |t| t.f_normal_(mean, std))
}

pub fn constant_(t: &Tensor, value: f64) -> Result<()> {
    fill("constant_", t, |t| t.f_fill_(scalar(value)))
}

pub fn zeros_(t: &Tensor) -> Result<()> {
    fill("zeros_", t, |t| t.f_zero_())
}

pub fn ones_(t: &Tensor) -> Result<()> {
    fill("ones_", t, |t| t.f_fill_(1))
}

fn kaiming_std(op: &str, t: &Tensor, a: f64, mode: FanMode, nonlinearity: &str) -> Result<f64> {
    let (fan_in, fan_out) = fans(op, t)?;
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    Ok(gain(op, nonlinearity, Some(a))? / (fan as f64).sqrt())
}

/// He initialisation, uniform: `U(-b, b)` with `b = gain * sqrt(3 / fan)`.
pub fn kaiming_uniform_(t: &Tensor, a: f64, mode: FanMode, nonlinearity: &str) -> Result<()> {
    const OP: &str = "kaimingUniform_";
    if t.numel() == 0 {
        return Ok(());
    }
    let bound = 3f64.sqrt() * kaiming_std(OP, t, a, mode, nonlinearity)?;
    fill(OP, t, |t| t.f_uniform_(-bound, bound))
}

/// He initialisation, normal: `N(0, gain / sqrt(fan))`.
pub fn kaiming_normal_(t: &Tensor, a: f64, mode: FanMode, nonlinearity: &str) -> Result<()> {
    const OP: &str = "kaimingNormal_";
    if t.numel() == 0 {
        return Ok(());
    }
    let std = kaiming_std(OP, t, a, mode, nonlinearity)?;
    fill(OP, t, |t| t.f_normal_(0.0, std))
}

fn xavier_std(op: &str, t: &Tensor, gain: f64) -> Result<f64> {
    let (fan_in, fan_out) = fans(op, t)?;
    Ok(gain * (2.0 / (fan_in + fan_out) as f64).sqrt())
}

/// Glorot initialisation, uniform: `U(-a, a)` with `a = gain * sqrt(6 / (fan_in + fan_out))`.
pub fn xavier_uniform_(t: &Tensor, gain: f64) -> Result<()> {
    const OP: &str = "xavierUniform_";
    let bound = 3f64.sqrt() * xavier_std(OP, t, gain)?;
    fill(OP, t, |t| t.f_uniform_(-bound, bound))
}

/// Glorot initialisation, normal: `N(0, gain * sqrt(2 / (fan_in + fan_out)))`.
pub fn xavier_normal_(t: &Tensor, gain: f64) -> Result<()> {
    const OP: &str = "xavierNormal_";
    let std = xavier_std(OP, t, gain)?;
    fill(OP, t, |t| t.f_normal_(0.0, std))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn kaiming_uniform_matches_pytorch_bitwise() -> Result<()> {
        // torch.manual_seed(0); w = torch.empty(3, 4); torch.nn.init.kaiming_uniform_(w, a=5**0.5)
        // w[0].tolist() -> [-0.003743410110473633, 0.26822179555892944, -0.4115225672721863, -0.3679695129394531]
        let _rng = crate::nn::rng_lock();
        tch::manual_seed(0);
        let w = Tensor::empty([3, 4], (Kind::Float, Device::Cpu));
        kaiming_uniform_(&w, 5f64.sqrt(), FanMode::FanIn, "leaky_relu")?;
        let row: Vec<f32> = Vec::try_from(w.get(0)).map_err(|e| Error::torch("test", vec![], e))?;
        assert_eq!(row, [-0.003_743_41, 0.268_221_8, -0.411_522_57, -0.367_969_5]);
        Ok(())
    }

    #[test]
    fn init_does_not_record_gradients() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        let w = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        xavier_normal_(&w, 1.0)?;
        constant_(&w, 0.5)?;
        assert!(w.is_leaf());
        assert_eq!(w.double_value(&[1, 1]), 0.5);
        Ok(())
    }

    #[test]
    fn fans_need_two_dims() {
        let b = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        assert!(xavier_uniform_(&b, 1.0).is_err());
    }
}
