//! A chain of layers run in one call: the host crosses into the engine once per
//! forward, however deep the stack.

use std::rc::Rc;
use tch::Tensor;

use super::Layer;
use crate::{Error, Result};

pub struct Sequential {
    layers: Vec<Rc<dyn Layer>>,
}

impl Sequential {
    pub fn new(layers: Vec<Rc<dyn Layer>>) -> Sequential {
        Sequential { layers }
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers on `x`; with `float32_output` a half-precision output comes as float32,
    /// converted inside the last layer's autograd node where it can be.
    fn run(&self, x: &Tensor, train: bool, float32_output: bool) -> Result<Tensor> {
        let Some((last, init)) = self.layers.split_last() else {
            let out = x.shallow_clone();
            return if float32_output {
                super::to_float32(out)
            } else {
                Ok(out)
            };
        };
        // Linear and ReLU layers only: one autograd node for the whole chain, where it fits.
        let links: Option<Vec<_>> = self.layers.iter().map(|l| l.link()).collect();
        let chained = links.map_or(Ok(None), |links| {
            super::functional::linear_chain(x, &links, float32_output)
        })?;
        if let Some(out) = chained {
            return Ok(out);
        }
        let first = init.first().unwrap_or(last);
        super::functional::cast_ahead(x, first.name() == "Linear", || self.linear_weights())?;
        let mut h = x.shallow_clone();
        for (i, layer) in init.iter().enumerate() {
            h = layer.forward(&h, train).map_err(|e| in_layer(i, layer.as_ref(), e))?;
        }
        let out = if float32_output {
            last.forward_float32(&h, train)
        } else {
            last.forward(&h, train)
        };
        out.map_err(|e| in_layer(init.len(), last.as_ref(), e))
    }
}

/// Says which child failed: `Sequential: layer 2 (Linear): input of shape ...`.
fn in_layer(index: usize, layer: &dyn Layer, err: Error) -> Error {
    Error::invalid("Sequential", format!("layer {index} ({}): {err}", layer.name()))
}

impl Layer for Sequential {
    fn name(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, false)
    }

    fn forward_float32(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, true)
    }

    fn children(&self) -> Vec<(String, Rc<dyn Layer>)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Linear, Placement, Relu};
    use tch::{Device, Kind};

    fn mlp() -> Result<Sequential> {
        let _rng = crate::nn::rng_lock();
        Ok(Sequential::new(vec![
            Rc::new(Linear::new(4, 8, true, Placement::default())?),
            Rc::new(Relu),
            Rc::new(Linear::new(8, 2, true, Placement::default())?),
        ]))
    }

    #[test]
    fn names_parameters_like_pytorch() -> Result<()> {
        let names: Vec<String> = mlp()?.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
        Ok(())
    }

    #[test]
    fn runs_every_layer_and_reports_the_failing_one() -> Result<()> {
        let net = mlp()?;
        let y = net.forward(&Tensor::ones([3, 4], (Kind::Float, Device::Cpu)), true)?;
        assert_eq!(y.size(), [3, 2]);
        let msg = net
            .forward(&Tensor::ones([3, 5], (Kind::Float, Device::Cpu)), true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.starts_with("Sequential: layer 0 (Linear): Linear: input of shape [3, 5]"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn forward_float32_converts_half_outputs_also_of_an_empty_chain() -> Result<()> {
        let x = Tensor::ones([3, 4], (Kind::BFloat16, Device::Cpu));
        let empty = Sequential::new(Vec::new());
        assert_eq!(empty.forward(&x, true)?.kind(), Kind::BFloat16);
        assert_eq!(empty.forward_float32(&x, true)?.kind(), Kind::Float);
        let relu = Sequential::new(vec![Rc::new(Relu)]);
        assert_eq!(relu.forward_float32(&x, true)?.kind(), Kind::Float);
        let integers = Tensor::ones([3], (Kind::Int64, Device::Cpu));
        assert_eq!(empty.forward_float32(&integers, true)?.kind(), Kind::Int64);
        Ok(())
    }
}
