//! The regular tensor operations, generated from one table. Each row names the
//! operation and its libtorch call; each becomes a native `tensorOp<Name>`
//! function that ts/tensor.ts installs as a `Tensor` method. Shapes and dtypes
//! in error messages come from the core.

use accelerate_core::tensor::ops::{self, Reduction};
use napi::bindgen_prelude::Either;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{dims, guarded, handle, with_all, with_operand, wrap};
use crate::fast::fast_exports;
use crate::tensor::{Tensor, TensorArg, TensorHandle, TensorOrNumber};

macro_rules! tensor_ops {
    (
        unary { $($u:ident => $uf:ident),* $(,)? }
        binary { $($b:ident => $bf:ident),* $(,)? }
        reduce { $($r:ident => $rk:ident),* $(,)? }
        with_args { $($m:ident ( $($arg:ident : $ty:ty),* ) => |$t:ident| $body:expr),* $(,)? }
    ) => { paste::paste! {
        $(
            #[napi]
            pub fn [<tensor_op_ $u>](env: Env, tensor: TensorArg) -> Result<TensorHandle> {
                guarded(stringify!($u), || {
                    let t = tensor.handle.get(stringify!($u))?;
                    Ok(handle(&env, ops::unary(stringify!($u), &t, |t| t.$uf())?))
                })
            }
        )*
        $(
            #[napi]
            pub fn [<tensor_op_ $b>](env: Env, tensor: TensorArg, other: TensorOrNumber) -> Result<TensorHandle> {
                guarded(stringify!($b), || {
                    let a = tensor.handle.get(stringify!($b))?;
                    let out = with_operand(stringify!($b), &other, |b| ops::binary(stringify!($b), &a, b, |a, b| a.$bf(b)))?;
                    Ok(handle(&env, out))
                })
            }
        )*
        $(
            #[napi]
            pub fn [<tensor_op_ $r>](env: Env, tensor: TensorArg, dim: Option<Either<i64, Vec<i64>>>, keepdim: Option<bool>) -> Result<TensorHandle> {
                guarded(stringify!($r), || {
                    let t = tensor.handle.get(stringify!($r))?;
                    let dims = dims(dim);
                    Ok(handle(&env, ops::reduce(stringify!($r), &t, dims.as_deref(), keepdim.unwrap_or(false), Reduction::$rk)?))
                })
            }
        )*
        $(
            #[napi]
            pub fn [<tensor_op_ $m>](env: Env, tensor: TensorArg, $($arg: $ty),*) -> Result<TensorHandle> {
                guarded(stringify!($m), || {
                    let $t = tensor.handle.get(stringify!($m))?;
                    Ok(handle(&env, ops::unary(stringify!($m), &$t, |$t| $body)?))
                })
            }
        )*
        fast_exports!(FAST_TABLE = [
            $( [<tensor_op_ $u>][env](TensorArg), )*
            $( [<tensor_op_ $b>][env](TensorArg, TensorOrNumber), )*
            $( [<tensor_op_ $r>][env](TensorArg, Option<Either<i64, Vec<i64>>>, Option<bool>), )*
            $( [<tensor_op_ $m>][env](TensorArg $(, $ty)*), )*
        ]);
    } };
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
        clone() => |t| t.f_to_dtype(t.kind(), false, true),
        std(dim: Option<i64>, keepdim: Option<bool>) => |t| t.f_std_dim(dim.map(|d| vec![d]).as_deref(), true, keepdim.unwrap_or(false)),
    }
}

/// Matrix product with numpy semantics (1-D, 2-D and broadcast batches).
#[napi]
pub fn tensor_op_matmul(env: Env, tensor: TensorArg, other: TensorArg) -> Result<TensorHandle> {
    guarded("matmul", || {
        Ok(handle(
            &env,
            ops::matmul(&*tensor.handle.get("matmul")?, &*other.handle.get("matmul")?)?,
        ))
    })
}

/// Operations taking a second tensor besides their own options.
fn with_tensor(
    env: &Env,
    op: &str,
    tensor: TensorArg,
    other: TensorArg,
    f: impl FnOnce(&tch::Tensor, &tch::Tensor) -> std::result::Result<tch::Tensor, tch::TchError>,
) -> Result<TensorHandle> {
    guarded(op, || {
        let (t, o) = (tensor.handle.get(op)?, other.handle.get(op)?);
        Ok(handle(env, ops::binary(op, &t, ops::Operand::Tensor(&o), f)?))
    })
}

/// Values of this tensor taken along `dim` at the positions in `index`.
#[napi]
pub fn tensor_op_gather(env: Env, tensor: TensorArg, dim: i64, index: TensorArg) -> Result<TensorHandle> {
    with_tensor(&env, "gather", tensor, index, |t, i| t.f_gather(dim, i, false))
}

#[napi]
pub fn tensor_op_index_select(env: Env, tensor: TensorArg, dim: i64, index: TensorArg) -> Result<TensorHandle> {
    with_tensor(&env, "index_select", tensor, index, |t, i| t.f_index_select(dim, i))
}

/// A copy with `value` where `mask` is true.
#[napi]
pub fn tensor_op_masked_fill(env: Env, tensor: TensorArg, mask: TensorArg, value: f64) -> Result<TensorHandle> {
    with_tensor(&env, "masked_fill", tensor, mask, |t, m| {
        t.f_masked_fill(m, ops::scalar(value))
    })
}

fast_exports!(
    FAST_EXTRA = [
        tensor_op_matmul[env](TensorArg, TensorArg),
        tensor_op_gather[env](TensorArg, i64, TensorArg),
        tensor_op_index_select[env](TensorArg, i64, TensorArg),
        tensor_op_masked_fill[env](TensorArg, TensorArg, f64),
    ]
);

#[napi]
pub fn cat(env: Env, tensors: Vec<Tensor>, dim: Option<i64>) -> Result<Tensor> {
    guarded("cat", || {
        Ok(wrap(
            &env,
            with_all("cat", &tensors, |ts| ops::cat(ts, dim.unwrap_or(0)))?,
        ))
    })
}

#[napi]
pub fn stack(env: Env, tensors: Vec<Tensor>, dim: Option<i64>) -> Result<Tensor> {
    guarded("stack", || {
        Ok(wrap(
            &env,
            with_all("stack", &tensors, |ts| ops::stack(ts, dim.unwrap_or(0)))?,
        ))
    })
}

/// Elements of `a` where `condition` is true, else of `b` (ts/tensor.ts's `where` checks `b`).
#[napi(js_name = "where")]
pub fn where_(env: Env, condition: Tensor, a: Tensor, b: TensorOrNumber) -> Result<Tensor> {
    guarded("where", || {
        let (c, a) = (condition.handle.get("where")?, a.handle.get("where")?);
        Ok(wrap(&env, with_operand("where", &b, |b| ops::where_(&c, &a, b))?))
    })
}
