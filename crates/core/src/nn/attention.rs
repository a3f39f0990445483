//! GPT-2 style causal self-attention: one qkv projection, libtorch's fused causal
//! scaled-dot-product attention over heads, an output projection, residual dropout.

use std::rc::Rc;
use tch::Tensor;

use super::functional::{check_probability, dropout_as, scaled_dot_product_attention};
use super::{Layer, Linear, Placement};
use crate::{Error, Result};

const OP: &str = "CausalSelfAttention";

pub struct CausalSelfAttention {
    dim: i64,
    heads: i64,
    dropout: f64,
    qkv: Rc<dyn Layer>,
    proj: Rc<dyn Layer>,
}

impl CausalSelfAttention {
    /// Creates its projections (qkv first, then proj: PyTorch's initialisation order).
    pub fn new(dim: i64, heads: i64, dropout: f64, bias: bool, at: Placement) -> Result<Self> {
        Self::check(dim, heads)?;
        let qkv = Rc::new(Linear::new(dim, 3 * dim, bias, at)?);
        let proj = Rc::new(Linear::new(dim, dim, bias, at)?);
        Self::from_parts(dim, heads, dropout, qkv, proj)
    }

    /// Uses existing projections: `qkv` maps `dim` to `3 * dim`, `proj` maps `dim` to `dim`.
    pub fn from_parts(dim: i64, heads: i64, dropout: f64, qkv: Rc<dyn Layer>, proj: Rc<dyn Layer>) -> Result<Self> {
        Self::check(dim, heads)?;
        check_probability(OP, dropout)?;
        Ok(CausalSelfAttention {
            dim,
            heads,
            dropout,
            qkv,
            proj,
        })
    }

    fn check(dim: i64, heads: i64) -> Result<()> {
        if dim <= 0 || heads <= 0 || dim % heads != 0 {
            return Err(Error::invalid(
                OP,
                format!("dim ({dim}) must be a positive multiple of heads ({heads})"),
            ));
        }
        Ok(())
    }
}

impl Layer for CausalSelfAttention {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        let &[b, t, d] = size.as_slice() else {
            return Err(Error::invalid(
                OP,
                format!("input must be [batch, time, {}], got shape {size:?}", self.dim),
            ));
        };
        if d != self.dim {
            return Err(Error::invalid(
                OP,
                format!("input must be [batch, time, {}], got shape {size:?}", self.dim),
            ));
        }
        let fail = |e| Error::torch(OP, vec![size.clone()], e);
        let qkv = self.qkv.forward(x, train)?;
        // [b, t, 3d] -> q, k, v of [b, heads, t, head_dim], as strided views (no copies). Split
        // along the features, so that backward joins the three gradients with one
        // concatenation into [b, t, 3d]; splitting a [3, b, heads, t, head_dim] permutation
        // instead would stack them and then copy the stack into that layout.
        let heads = |part: Tensor| {
            part.f_view([b, t, self.heads, d / self.heads])
                .and_then(|v| v.f_transpose(1, 2))
        };
        let parts = qkv.f_split(d, 2).map_err(fail)?;
        let [q, k, v] = <[Tensor; 3]>::try_from(parts)
            .map_err(|_| Error::invalid(OP, "qkv projection did not give three parts"))?
            .map(heads);
        let (q, k, v) = (q.map_err(fail)?, k.map_err(fail)?, v.map_err(fail)?);
        let p = if train { self.dropout } else { 0.0 };
        let y = scaled_dot_product_attention(&q, &k, &v, None, p, true, None)?;
        let y = y.f_transpose(1, 2).and_then(|y| y.f_reshape([b, t, d])).map_err(fail)?;
        dropout_as(OP, &self.proj.forward(&y, train)?, self.dropout, train)
    }

    fn children(&self) -> Vec<(String, Rc<dyn Layer>)> {
        vec![
            ("qkv".to_string(), self.qkv.clone()),
            ("proj".to_string(), self.proj.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn is_causal_and_named_like_pytorch() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        tch::manual_seed(1);
        let attn = CausalSelfAttention::new(8, 2, 0.0, true, Placement::default())?;
        let names: Vec<String> = attn.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]);
        let x = Tensor::randn([1, 5, 8], (Kind::Float, Device::Cpu));
        let y = attn.forward(&x, false)?;
        // Changing the last position must not change earlier outputs.
        let x2 = x.copy();
        let _ = x2.narrow(1, 4, 1).fill_(3.0);
        let y2 = attn.forward(&x2, false)?;
        assert!(y.narrow(1, 0, 4).allclose(&y2.narrow(1, 0, 4), 1e-5, 1e-6, false));
        assert!(!y.narrow(1, 4, 1).allclose(&y2.narrow(1, 4, 1), 1e-5, 1e-6, false));
        Ok(())
    }
}
