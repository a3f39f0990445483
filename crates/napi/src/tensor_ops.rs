//! The regular tensor operations, generated from one table. Each row names the
//! operation and its libtorch call; each becomes a native `tensorOp<Name>`
//! function that ts/tensor.ts installs as a `Tensor` method. Shapes and dtypes
//! in error messages come from the core.

use accelerate_core::tensor::ops::{self, Reduction};
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, handle, with_all, with_operand, wrap};
use crate::fast::fast_exports;
use crate::int::{Checked, Dims, Int, Ints};
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
            pub fn [<tensor_op_ $r>](env: Env, tensor: TensorArg, dim: Option<Dims>, keepdim: Option<bool>) -> Result<TensorHandle> {
                guarded(stringify!($r), || {
                    let t = tensor.handle.get(stringify!($r))?;
                    let dims = dim.map(|d| d.get(stringify!($r), "dim")).transpose()?;
                    Ok(handle(&env, ops::reduce(stringify!($r), &t, dims.as_deref(), keepdim.unwrap_or(false), Reduction::$rk)?))
                })
            }
        )*
        $(
            #[napi]
            pub fn [<tensor_op_ $m>](env: Env, tensor: TensorArg, $($arg: $ty),*) -> Result<TensorHandle> {
                guarded(stringify!($m), || {
                    $( let $arg = Checked::checked($arg, stringify!($m), stringify!($arg))?; )*
                    let $t = tensor.handle.get(stringify!($m))?;
                    Ok(handle(&env, ops::unary(stringify!($m), &$t, |$t| $body)?))
                })
            }
        )*
        fast_exports!(FAST_TABLE = [
            $( [<tensor_op_ $u>][env](TensorArg), )*
            $( [<tensor_op_ $b>][env](TensorArg, TensorOrNumber), )*
            $( [<tensor_op_ $r>][env](TensorArg, Option<Dims>, Option<bool>), )*
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
        contiguous => f_contiguous,
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
        reshape(shape: Ints) => |t| t.f_reshape(&shape),
        view(shape: Ints) => |t| t.f_view(shape.as_slice()),
        permute(dims: Ints) => |t| t.f_permute(&dims),
        transpose(dim0: Int, dim1: Int) => |t| t.f_transpose(dim0, dim1),
        squeeze(dim: Option<Int>) => |t| match dim { Some(d) => t.f_squeeze_dim(d), None => t.f_squeeze() },
        unsqueeze(dim: Int) => |t| t.f_unsqueeze(dim),
        flatten(start_dim: Option<Int>, end_dim: Option<Int>) => |t| t.f_flatten(start_dim.unwrap_or(0), end_dim.unwrap_or(-1)),
        expand(shape: Ints) => |t| t.f_expand(&shape, false),
        slice(dim: Int, start: Option<Int>, end: Option<Int>, step: Option<Int>) => |t| t.f_slice(dim, start, end, step.unwrap_or(1)),
        narrow(dim: Int, start: Int, length: Int) => |t| t.f_narrow(dim, start, length),
        softmax(dim: Int) => |t| t.f_softmax(dim, None::<tch::Kind>),
        log_softmax(dim: Int) => |t| t.f_log_softmax(dim, None::<tch::Kind>),
        clamp(min: Option<f64>, max: Option<f64>) => |t| ops::clamp(t, min, max),
        gelu(approximate: Option<String>) => |t| t.f_gelu(approximate.as_deref().unwrap_or("none")),
        t() => |t| t.f_transpose(-2, -1),
        clone() => |t| t.f_to_dtype(t.kind(), false, true),
        std(dim: Option<Int>, keepdim: Option<bool>) => |t| t.f_std_dim(dim.map(|d| vec![d]).as_deref(), true, keepdim.unwrap_or(false)),
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
pub fn tensor_op_gather(env: Env, tensor: TensorArg, dim: Int, index: TensorArg) -> Result<TensorHandle> {
    let dim = guarded("gather", || dim.get("gather", "dim"))?;
    with_tensor(&env, "gather", tensor, index, |t, i| t.f_gather(dim, i, false))
}

#[napi]
pub fn tensor_op_index_select(env: Env, tensor: TensorArg, dim: Int, index: TensorArg) -> Result<TensorHandle> {
    let dim = guarded("indexSelect", || dim.get("index_select", "dim"))?;
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
        tensor_op_gather[env](TensorArg, Int, TensorArg),
        tensor_op_index_select[env](TensorArg, Int, TensorArg),
        tensor_op_masked_fill[env](TensorArg, TensorArg, f64),
    ]
);

#[napi]
pub fn cat(env: Env, tensors: Vec<Tensor>, dim: Option<Int>) -> Result<Tensor> {
    guarded("cat", || {
        let dim = dim.checked("cat", "dim")?.unwrap_or(0);
        Ok(wrap(&env, with_all("cat", &tensors, |ts| ops::cat(ts, dim))?))
    })
}

#[napi]
pub fn stack(env: Env, tensors: Vec<Tensor>, dim: Option<Int>) -> Result<Tensor> {
    guarded("stack", || {
        let dim = dim.checked("stack", "dim")?.unwrap_or(0);
        Ok(wrap(&env, with_all("stack", &tensors, |ts| ops::stack(ts, dim))?))
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
