//! Safe wrappers over shim/optim.cpp: libtorch's fused optimizer steps and the foreach
//! gradient operations (norm, clip, zero), which tch does not bind.

use crate::shim::{check, owned};
use crate::Result;
use tch::Tensor;
use torch_sys::C_tensor;

type List = *const *const C_tensor;

extern "C" {
    fn acc_fused_adam(
        params: List,
        grads: List,
        exp_avgs: List,
        exp_avg_sqs: List,
        max_exp_avg_sqs: List,
        steps: List,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        amsgrad: i32,
        maximize: i32,
        decoupled: i32,
        grad_scale: *const C_tensor,
        found_inf: *const C_tensor,
        lr_tensor: *const C_tensor,
    ) -> i32;
    fn acc_fused_sgd(
        params: List,
        grads: List,
        momentum_buffers: List,
        n: i64,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        dampening: f64,
        nesterov: i32,
        maximize: i32,
        is_first_step: i32,
        grad_scale: *const C_tensor,
        found_inf: *const C_tensor,
        lr_tensor: *const C_tensor,
    ) -> i32;
    fn acc_zero_grads(params: List, n: i64, set_to_none: i32) -> i32;
    fn acc_total_grad_norm(params: List, n: i64, norm_type: f64, out: *mut *mut C_tensor) -> i32;
    fn acc_clip_grads_with_norm(params: List, n: i64, max_norm: f64, total_norm: *const C_tensor) -> i32;
    fn acc_clip_grad_value(params: List, n: i64, value: f64) -> i32;
    fn acc_tensor_identity(t: *const C_tensor, out: *mut usize) -> i32;
}

fn pointers<T: std::borrow::Borrow<Tensor>>(tensors: &[T]) -> Vec<*const C_tensor> {
    tensors.iter().map(|t| t.borrow().as_ptr()).collect()
}

fn optional(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), Tensor::as_ptr)
}

/// Gradient-scaler inputs of a step (both absent for a plain step): the fused kernels
/// unscale gradients by `grad_scale` and skip the update where `found_inf` is non-zero.
#[derive(Default, Clone, Copy)]
pub struct AmpInputs<'a> {
    pub grad_scale: Option<&'a Tensor>,
    pub found_inf: Option<&'a Tensor>,
}

/// Lists of equal length for one Adam step; `max_exp_avg_sqs` is empty without amsgrad.
pub struct AdamLists<'a> {
    pub params: Vec<&'a Tensor>,
    pub grads: Vec<Tensor>,
    pub exp_avgs: Vec<&'a Tensor>,
    pub exp_avg_sqs: Vec<&'a Tensor>,
    pub max_exp_avg_sqs: Vec<&'a Tensor>,
    pub steps: Vec<&'a Tensor>,
}

pub struct AdamScalars<'a> {
    pub lr: f64,
    /// Read for the learning rate when the kernel runs instead of `lr` (a captured step).
    pub lr_tensor: Option<&'a Tensor>,
    pub betas: (f64, f64),
    pub weight_decay: f64,
    pub eps: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    pub decoupled: bool,
}

pub fn fused_adam(op: &str, lists: &AdamLists, s: &AdamScalars, amp: AmpInputs) -> Result<()> {
    let n = lists.params.len();
    let all = [
        lists.exp_avgs.len(),
        lists.exp_avg_sqs.len(),
        lists.steps.len(),
        lists.grads.len(),
    ];
    if all.iter().any(|&len| len != n) || (s.amsgrad && lists.max_exp_avg_sqs.len() != n) {
        return Err(crate::Error::invalid(
            op,
            "internal error: Adam state lists differ in length",
        ));
    }
    let (params, grads) = (pointers(&lists.params), pointers(&lists.grads));
    let (exp_avgs, exp_avg_sqs) = (pointers(&lists.exp_avgs), pointers(&lists.exp_avg_sqs));
    let (max_sqs, steps) = (pointers(&lists.max_exp_avg_sqs), pointers(&lists.steps));
    // SAFETY: every array holds `n` live tensors (max_sqs too when amsgrad), kept alive by `lists`.
    let status = unsafe {
        acc_fused_adam(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            max_sqs.as_ptr(),
            steps.as_ptr(),
            n as i64,
            s.lr,
            s.betas.0,
            s.betas.1,
            s.weight_decay,
            s.eps,
            s.amsgrad as i32,
            s.maximize as i32,
            s.decoupled as i32,
            optional(amp.grad_scale),
            optional(amp.found_inf),
            optional(s.lr_tensor),
        )
    };
    check(op, status)
}

pub struct SgdScalars<'a> {
    pub lr: f64,
    /// Read for the learning rate when the kernel runs instead of `lr` (a captured step).
    pub lr_tensor: Option<&'a Tensor>,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
}

/// One fused SGD step; `buffers` is empty when momentum is 0, and holds fresh (uninitialised)
/// buffers when `is_first_step`.
pub fn fused_sgd(
    op: &str,
    params: &[&Tensor],
    grads: &[Tensor],
    buffers: &[&Tensor],
    s: &SgdScalars,
    is_first_step: bool,
    amp: AmpInputs,
) -> Result<()> {
    let n = params.len();
    let with_momentum = s.momentum != 0.0;
    if grads.len() != n || (with_momentum && buffers.len() != n) {
        return Err(crate::Error::invalid(op, "internal error: SGD lists differ in length"));
    }
    let (params, grads, buffers) = (pointers(params), pointers(grads), pointers(buffers));
    let buffers_ptr = if with_momentum {
        buffers.as_ptr()
    } else {
        std::ptr::null()
    };
    // SAFETY: the arrays hold `n` live tensors each (buffers only when non-null).
    let status = unsafe {
        acc_fused_sgd(
            params.as_ptr(),
            grads.as_ptr(),
            buffers_ptr,
            n as i64,
            s.weight_decay,
            s.momentum,
            s.lr,
            s.dampening,
            s.nesterov as i32,
            s.maximize as i32,
            is_first_step as i32,
            optional(amp.grad_scale),
            optional(amp.found_inf),
            optional(s.lr_tensor),
        )
    };
    check(op, status)
}

/// Sets the gradients of `params` to none, or zeroes them in place.
pub fn zero_grads(op: &str, params: &[&Tensor], set_to_none: bool) -> Result<()> {
    let list = pointers(params);
    // SAFETY: `list` holds live tensors owned by `params`.
    check(op, unsafe {
        acc_zero_grads(list.as_ptr(), list.len() as i64, set_to_none as i32)
    })
}

/// The total norm of the gradients of `params` (a 0-d tensor).
pub fn total_grad_norm(op: &str, params: &[&Tensor], norm_type: f64) -> Result<Tensor> {
    let list = pointers(params);
    let mut out = std::ptr::null_mut();
    // SAFETY: `list` holds live tensors; `out` is a valid out-pointer.
    let status = unsafe { acc_total_grad_norm(list.as_ptr(), list.len() as i64, norm_type, &mut out) };
    owned(op, status, out)
}

pub fn clip_grads_with_norm(op: &str, params: &[&Tensor], max_norm: f64, total: &Tensor) -> Result<()> {
    let list = pointers(params);
    // SAFETY: `list` and `total` are live tensors.
    check(op, unsafe {
        acc_clip_grads_with_norm(list.as_ptr(), list.len() as i64, max_norm, total.as_ptr())
    })
}

pub fn clip_grad_value(op: &str, params: &[&Tensor], value: f64) -> Result<()> {
    let list = pointers(params);
    // SAFETY: `list` holds live tensors.
    check(op, unsafe {
        acc_clip_grad_value(list.as_ptr(), list.len() as i64, value)
    })
}

/// The identity of the TensorImpl behind `t`: equal for all shallow clones of one parameter.
pub fn identity(op: &str, t: &Tensor) -> Result<usize> {
    let mut out = 0usize;
    // SAFETY: `t` is live; `out` is a valid out-pointer.
    check(op, unsafe { acc_tensor_identity(t.as_ptr(), &mut out) })?;
    Ok(out)
}
