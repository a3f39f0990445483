//! Operations whose semantics need more than a direct libtorch call: scalar
//! operands, shape checks with readable messages, optional reduction dims, indexing.

use super::shapes;
use crate::{dtype, Error, Result};
use tch::{Device, Kind, Scalar, TchError, Tensor};

/// The right-hand side of a binary operation: another tensor or a plain number.
pub enum Operand<'a> {
    Tensor(&'a Tensor),
    Scalar(f64),
}

/// A number as libtorch sees a Python number: integral values stay integers, so
/// `intTensor.add(2)` stays int64 and `floatTensor.add(2)` stays float32.
pub fn scalar(v: f64) -> Scalar {
    if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        Scalar::int(v as i64)
    } else {
        Scalar::float(v)
    }
}

/// A 0-d CPU tensor holding `v`, with the kind PyTorch's promotion gives a Python
/// number combined with `like` (0-d CPU tensors mix with tensors on any device).
fn scalar_tensor(op: &str, v: f64, like: &Tensor) -> Result<Tensor> {
    let kind = like.kind();
    let integral = v.fract() == 0.0 && v.is_finite();
    let kind = if dtype::is_floating(kind) {
        kind
    } else if !integral {
        Kind::Float
    } else if kind == Kind::Bool {
        Kind::Int64
    } else {
        kind
    };
    Tensor::f_scalar_tensor(scalar(v), (kind, Device::Cpu)).map_err(|e| Error::torch(op, vec![], e))
}

pub fn unary(op: &str, t: &Tensor, f: impl FnOnce(&Tensor) -> std::result::Result<Tensor, TchError>) -> Result<Tensor> {
    f(t).map_err(|e| Error::torch(op, shapes(&[t]), e))
}

pub fn binary(
    op: &str,
    a: &Tensor,
    b: Operand,
    f: impl FnOnce(&Tensor, &Tensor) -> std::result::Result<Tensor, TchError>,
) -> Result<Tensor> {
    match b {
        Operand::Tensor(b) => f(a, b).map_err(|e| Error::torch(op, shapes(&[a, b]), e)),
        Operand::Scalar(v) => {
            let b = scalar_tensor(op, v, a)?;
            f(a, &b).map_err(|e| Error::torch(op, shapes(&[a]), e))
        }
    }
}

/// Matrix product with numpy semantics (1-D, 2-D and broadcast batches).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.size(), b.size());
    if sa.is_empty() || sb.is_empty() {
        return Err(Error::invalid(
            "matmul",
            format!("both arguments need at least one dimension, got shapes {sa:?} and {sb:?}"),
        ));
    }
    let inner_a = sa[sa.len() - 1];
    let inner_b = if sb.len() == 1 { sb[0] } else { sb[sb.len() - 2] };
    if inner_a != inner_b {
        return Err(Error::invalid(
            "matmul",
            format!("shapes {sa:?} and {sb:?} cannot be multiplied"),
        ));
    }
    a.f_matmul(b).map_err(|e| Error::torch("matmul", vec![sa, sb], e))
}

#[derive(Clone, Copy)]
pub enum Reduction {
    Sum,
    Mean,
    Max,
    Min,
    Argmax,
    Argmin,
}

/// A reduction over `dims` (all dims when `None`). `max`/`min`/`argmax`/`argmin` take one dim.
pub fn reduce(op: &str, t: &Tensor, dims: Option<&[i64]>, keepdim: bool, how: Reduction) -> Result<Tensor> {
    let fail = |e| Error::torch(op, shapes(&[t]), e);
    let single = |dims: Option<&[i64]>| -> Result<Option<i64>> {
        match dims {
            None => Ok(None),
            Some([d]) => Ok(Some(*d)),
            Some(ds) => Err(Error::invalid(op, format!("takes one dim, got {ds:?}"))),
        }
    };
    let all: Vec<i64> = (0..t.dim() as i64).collect();
    let dims_or_all = dims.unwrap_or(&all);
    match how {
        Reduction::Sum if dims.is_none() && !keepdim => t.f_sum(None::<Kind>).map_err(fail),
        Reduction::Sum => t.f_sum_dim_intlist(dims_or_all, keepdim, None::<Kind>).map_err(fail),
        Reduction::Mean if dims.is_none() && !keepdim => t.f_mean(None::<Kind>).map_err(fail),
        Reduction::Mean => t.f_mean_dim(dims_or_all, keepdim, None::<Kind>).map_err(fail),
        Reduction::Max | Reduction::Min => match single(dims)? {
            None if matches!(how, Reduction::Max) => t.f_max().map_err(fail),
            None => t.f_min().map_err(fail),
            Some(d) if matches!(how, Reduction::Max) => t.f_max_dim(d, keepdim).map(|(v, _)| v).map_err(fail),
            Some(d) => t.f_min_dim(d, keepdim).map(|(v, _)| v).map_err(fail),
        },
        Reduction::Argmax => t.f_argmax(single(dims)?, keepdim).map_err(fail),
        Reduction::Argmin => t.f_argmin(single(dims)?, keepdim).map_err(fail),
    }
}

/// `t[i]` for an integer (negative counts from the end) or a tensor of indices / a boolean mask.
pub fn index(t: &Tensor, i: Operand) -> Result<Tensor> {
    match i {
        Operand::Scalar(v) => {
            let len = t
                .size()
                .first()
                .copied()
                .ok_or_else(|| Error::invalid("index", "cannot index a 0-d tensor"))?;
            let i = v as i64;
            if v.fract() != 0.0 || i < -len || i >= len {
                return Err(Error::invalid(
                    "index",
                    format!("index {v} is out of range for dimension 0 of size {len}"),
                ));
            }
            t.f_select(0, i).map_err(|e| Error::torch("index", shapes(&[t]), e))
        }
        Operand::Tensor(idx) => t
            .f_index(&[Some(idx)])
            .map_err(|e| Error::torch("index", shapes(&[t, idx]), e)),
    }
}

/// Splits into pieces of `size` along `dim` (the last may be smaller), or into the given sizes.
pub fn split(t: &Tensor, sizes: &[i64], dim: i64) -> Result<Vec<Tensor>> {
    let fail = |e| Error::torch("split", shapes(&[t]), e);
    match sizes {
        [size] => t.f_split(*size, dim).map_err(fail),
        sizes => t.f_split_with_sizes(sizes, dim).map_err(fail),
    }
}

pub fn chunk(t: &Tensor, chunks: i64, dim: i64) -> Result<Vec<Tensor>> {
    if chunks < 1 {
        return Err(Error::invalid(
            "chunk",
            format!("chunks must be at least 1, got {chunks}"),
        ));
    }
    t.f_chunk(chunks, dim)
        .map_err(|e| Error::torch("chunk", shapes(&[t]), e))
}

pub fn cat(tensors: &[&Tensor], dim: i64) -> Result<Tensor> {
    if tensors.is_empty() {
        return Err(Error::invalid("cat", "needs at least one tensor"));
    }
    Tensor::f_cat(tensors, dim).map_err(|e| Error::torch("cat", shapes(tensors), e))
}

pub fn stack(tensors: &[&Tensor], dim: i64) -> Result<Tensor> {
    if tensors.is_empty() {
        return Err(Error::invalid("stack", "needs at least one tensor"));
    }
    Tensor::f_stack(tensors, dim).map_err(|e| Error::torch("stack", shapes(tensors), e))
}

/// Elements of `a` where `condition` holds, else of `b`.
pub fn where_(condition: &Tensor, a: &Tensor, b: Operand) -> Result<Tensor> {
    binary("where", a, b, |a, b| a.f_where_self(condition, b))
}

/// Limits values to `[min, max]`; either bound may be absent.
pub fn clamp(t: &Tensor, min: Option<f64>, max: Option<f64>) -> std::result::Result<Tensor, TchError> {
    match (min, max) {
        (Some(lo), Some(hi)) => t.f_clamp(scalar(lo), scalar(hi)),
        (Some(lo), None) => t.f_clamp_min(scalar(lo)),
        (None, Some(hi)) => t.f_clamp_max(scalar(hi)),
        (None, None) => t.f_contiguous(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_mismatch_names_shapes() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
        let err = matmul(&a, &b).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("matmul: shapes [2, 3] and [4, 5] cannot be multiplied")
        );
    }

    #[test]
    fn integral_scalars_keep_integer_dtype() -> Result<()> {
        let a = Tensor::from_slice(&[1i64, 2]);
        assert_eq!(
            binary("add", &a, Operand::Scalar(2.0), |a, b| a.f_add(b))?.kind(),
            Kind::Int64
        );
        assert_eq!(
            binary("add", &a, Operand::Scalar(0.5), |a, b| a.f_add(b))?.kind(),
            Kind::Float
        );
        let f = Tensor::from_slice(&[1.0f32]);
        assert_eq!(
            binary("mul", &f, Operand::Scalar(3.0), |a, b| a.f_mul(b))?.kind(),
            Kind::Float
        );
        Ok(())
    }

    #[test]
    fn torch_errors_keep_one_line_and_shapes() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let msg = binary("add", &a, Operand::Tensor(&b), |a, b| a.f_add(b))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.starts_with("add: "), "{msg}");
        assert!(msg.ends_with("(shapes [2, 3] and [4])"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
