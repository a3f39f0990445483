//! The regular tensor operations, generated from one table. Each row names the
//! JS method and the libtorch call; shapes and dtypes in errors come from the core.

use accelerate_core::tensor::ops::{self, Reduction};
use napi::bindgen_prelude::Either;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{dims, guarded, with_all, with_operand, wrap};
use crate::tensor::Tensor;

macro_rules! tensor_ops {
    (
        unary { $($u:ident => $uf:ident),* $(,)? }
        binary { $($b:ident => $bf:ident),* $(,)? }
        reduce { $($r:ident => $rk:ident),* $(,)? }
        with_args { $($m:ident ( $($arg:ident : $ty:ty),* ) => |$t:ident| $body:expr),* $(,)? }
    ) => {
        #[napi]
        impl Tensor {
            $(
                #[napi]
                pub fn $u(&self, env: Env) -> Result<Tensor> {
                    guarded(stringify!($u), || {
                        let t = self.handle.get(stringify!($u))?;
                        Ok(wrap(&env, ops::unary(stringify!($u), &t, |t| t.$uf())?))
                    })
                }
            )*
            $(
                #[napi]
                pub fn $b(&self, env: Env, other: Either<&Tensor, f64>) -> Result<Tensor> {
                    guarded(stringify!($b), || {
                        let a = self.handle.get(stringify!($b))?;
                        let out = with_operand(stringify!($b), &other, |b| ops::binary(stringify!($b), &a, b, |a, b| a.$bf(b)))?;
                        Ok(wrap(&env, out))
                    })
                }
            )*
            $(
                #[napi]
                pub fn $r(&self, env: Env, dim: Option<Either<i64, Vec<i64>>>, keepdim: Option<bool>) -> Result<Tensor> {
                    guarded(stringify!($r), || {
                        let t = self.handle.get(stringify!($r))?;
                        let dims = dims(dim);
                        Ok(wrap(&env, ops::reduce(stringify!($r), &t, dims.as_deref(), keepdim.unwrap_or(false), Reduction::$rk)?))
                    })
                }
            )*
            $(
                #[napi]
                pub fn $m(&self, env: Env, $($arg: $ty),*) -> Result<Tensor> {
                    guarded(stringify!($m), || {
                        let $t = self.handle.get(stringify!($m))?;
                        Ok(wrap(&env, ops::unary(stringify!($m), &$t, |$t| $body)?))
                    })
                }
            )*
        }
    };
}

tensor_ops! {
    unary {
        neg => f_neg, abs => f_abs, exp => f_exp, log => f_log, sqrt => f_sqrt, rsqrt => f_rsqrt,
        sin => f_sin, cos => f_cos, tanh => f_tanh, sigmoid => f_sigmoid, relu => f_relu,
        floor => f_floor, ceil => f_ceil, round => f_round, sign => f_sign, square => f_square, reciprocal => f_reciprocal,
        logical_not => f_logical_not, isnan => f_isnan, isfinite => f_isfinite,
        detach => f_detach, contiguous => f_contiguous,
    }
    binary {
        add => f_add, sub => f_sub, mul => f_mul, div => f_div, pow => f_pow, remainder => f_remainder_tensor,
        maximum => f_maximum, minimum => f_minimum,
        eq => f_eq_tensor, ne => f_ne_tensor, lt => f_lt_tensor, le => f_le_tensor, gt => f_gt_tensor, ge => f_ge_tensor,
        logical_and => f_logical_and, logical_or => f_logical_or,
    }
    reduce {
        sum => Sum, mean => Mean, max => Max, min => Min, argmax => Argmax, argmin => Argmin,
    }
    with_args {
        reshape(shape: Vec<i64>) => |t| t.f_reshape(&shape),
        view(shape: Vec<i64>) => |t| t.f_view(shape.as_slice()),
        permute(dims: Vec<i64>) => |t| t.f_permute(&dims),
        transpose(dim0: i64, dim1: i64) => |t| t.f_transpose(dim0, dim1),
        squeeze(dim: Option<i64>) => |t| match dim { Some(d) => t.f_squeeze_dim(d), None => t.f_squeeze() },
        unsqueeze(dim: i64) => |t| t.f_unsqueeze(dim),
        flatten(start_dim: Option<i64>, end_dim: Option<i64>) => |t| t.f_flatten(start_dim.unwrap_or(0), end_dim.unwrap_or(-1)),
        expand(shape: Vec<i64>) => |t| t.f_expand(&shape, false),
        slice(dim: i64, start: Option<i64>, end: Option<i64>, step: Option<i64>) => |t| t.f_slice(dim, start, end, step.unwrap_or(1)),
        narrow(dim: i64, start: i64, length: i64) => |t| t.f_narrow(dim, start, length),
        softmax(dim: i64) => |t| t.f_softmax(dim, None::<tch::Kind>),
        log_softmax(dim: i64) => |t| t.f_log_softmax(dim, None::<tch::Kind>),
        clamp(min: Option<f64>, max: Option<f64>) => |t| ops::clamp(t, min, max),
        gelu(approximate: Option<String>) => |t| t.f_gelu(approximate.as_deref().unwrap_or("none")),
        t() => |t| t.f_transpose(-2, -1),
        std(dim: Option<i64>, keepdim: Option<bool>) => |t| t.f_std_dim(dim.map(|d| vec![d]).as_deref(), true, keepdim.unwrap_or(false)),
    }
}

/// Hand-written rows: operations taking other tensors in positions the table does not cover.
#[napi]
impl Tensor {
    #[napi]
    pub fn matmul(&self, env: Env, other: &Tensor) -> Result<Tensor> {
        guarded("matmul", || {
            Ok(wrap(
                &env,
                ops::matmul(&*self.handle.get("matmul")?, &*other.handle.get("matmul")?)?,
            ))
        })
    }

    /// Values of this tensor taken along `dim` at the positions in `index`.
    #[napi]
    pub fn gather(&self, env: Env, dim: i64, index: &Tensor) -> Result<Tensor> {
        guarded("gather", || {
            let (t, i) = (self.handle.get("gather")?, index.handle.get("gather")?);
            Ok(wrap(
                &env,
                ops::binary("gather", &t, ops::Operand::Tensor(&i), |t, i| {
                    t.f_gather(dim, i, false)
                })?,
            ))
        })
    }

    #[napi]
    pub fn index_select(&self, env: Env, dim: i64, index: &Tensor) -> Result<Tensor> {
        guarded("indexSelect", || {
            let (t, i) = (
                self.handle.get("indexSelect")?,
                index.handle.get("indexSelect")?,
            );
            Ok(wrap(
                &env,
                ops::binary("index_select", &t, ops::Operand::Tensor(&i), |t, i| {
                    t.f_index_select(dim, i)
                })?,
            ))
        })
    }

    /// A copy with `value` where `mask` is true.
    #[napi]
    pub fn masked_fill(&self, env: Env, mask: &Tensor, value: f64) -> Result<Tensor> {
        guarded("maskedFill", || {
            let (t, m) = (
                self.handle.get("maskedFill")?,
                mask.handle.get("maskedFill")?,
            );
            Ok(wrap(
                &env,
                ops::binary("masked_fill", &t, ops::Operand::Tensor(&m), |t, m| {
                    t.f_masked_fill(m, ops::scalar(value))
                })?,
            ))
        })
    }
}

#[napi]
pub fn cat(env: Env, tensors: Vec<&Tensor>, dim: Option<i64>) -> Result<Tensor> {
    guarded("cat", || {
        Ok(wrap(
            &env,
            with_all("cat", &tensors, |ts| ops::cat(ts, dim.unwrap_or(0)))?,
        ))
    })
}

#[napi]
pub fn stack(env: Env, tensors: Vec<&Tensor>, dim: Option<i64>) -> Result<Tensor> {
    guarded("stack", || {
        Ok(wrap(
            &env,
            with_all("stack", &tensors, |ts| ops::stack(ts, dim.unwrap_or(0)))?,
        ))
    })
}

/// Elements of `a` where `condition` is true, else of `b`.
#[napi(js_name = "where")]
pub fn where_(env: Env, condition: &Tensor, a: &Tensor, b: Either<&Tensor, f64>) -> Result<Tensor> {
    guarded("where", || {
        let (c, a) = (condition.handle.get("where")?, a.handle.get("where")?);
        Ok(wrap(
            &env,
            with_operand("where", &b, |b| ops::where_(&c, &a, b))?,
        ))
    })
}
