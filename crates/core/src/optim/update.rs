//! One update of one param group: lazily creates per-parameter state as PyTorch does,
//! then runs the fused kernel. Works on any list of (parameter, gradient, state), so a
//! sharded optimizer (ZeRO) can step just the parameters it owns.

use super::kernels::{self, AdamLists, AdamScalars, AmpInputs, SgdScalars};
use super::options::{Algorithm, Hyperparams};
use super::ParamState;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// A parameter that has a gradient, with its state.
pub struct Slot<'a> {
    pub param: &'a Tensor,
    pub grad: Tensor,
    pub state: &'a mut ParamState,
}

pub fn apply(op: &str, algorithm: Algorithm, hp: &Hyperparams, slots: &mut [Slot], amp: AmpInputs) -> Result<()> {
    apply_reading_lr(op, algorithm, hp, slots, amp, None)
}

/// `apply`, with the learning rate read from `lr_tensor` when the kernel runs (when given).
pub fn apply_reading_lr(
    op: &str,
    algorithm: Algorithm,
    hp: &Hyperparams,
    slots: &mut [Slot],
    amp: AmpInputs,
    lr_tensor: Option<&Tensor>,
) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    match algorithm {
        Algorithm::Sgd => sgd(op, hp, slots, amp, lr_tensor),
        Algorithm::Adam => adam(op, hp, slots, false, amp, lr_tensor),
        Algorithm::AdamW => adam(op, hp, slots, true, amp, lr_tensor),
    }
}

fn check_fusable(op: &str, slot: &Slot) -> Result<()> {
    if !crate::dtype::is_floating(slot.param.kind()) {
        return Err(Error::invalid(
            op,
            format!(
                "parameters must be floating point, got {} (shape {:?})",
                crate::dtype::name(slot.param.kind()),
                slot.param.size()
            ),
        ));
    }
    if slot.grad.is_sparse() {
        return Err(Error::invalid(op, "sparse gradients are not supported"));
    }
    Ok(())
}

/// torch.optim.Adam's `_init_group`: step (float32, on the parameter's device, as with
/// fused=True), first and second moments, and the running max with amsgrad.
fn init_adam_state(op: &str, slot: &mut Slot, amsgrad: bool) -> Result<()> {
    let p = slot.param;
    let fail = Error::on(op, p);
    if slot.state.is_empty() {
        let step = Tensor::f_zeros([], (Kind::Float, p.device())).map_err(&fail)?;
        slot.state.insert("step".into(), step);
        slot.state.insert("exp_avg".into(), p.f_zeros_like().map_err(&fail)?);
        slot.state.insert("exp_avg_sq".into(), p.f_zeros_like().map_err(&fail)?);
    }
    if amsgrad && !slot.state.contains_key("max_exp_avg_sq") {
        slot.state
            .insert("max_exp_avg_sq".into(), p.f_zeros_like().map_err(&fail)?);
    }
    Ok(())
}

/// While a step is recorded into a CUDA graph (the learning rate read from a tensor), new
/// per-parameter state would be recorded too, and zeroed again by every replay: refused, so
/// that compileStep runs the step uncaptured once (creating it) and records the next one.
const STATE_WHILE_RECORDING: &str =
    "optimizer state would be created while the step is recorded (a parameter without a gradient in the warm-up calls, or a new param group)";

fn state<'a>(op: &str, slot: &'a Slot, name: &str) -> Result<&'a Tensor> {
    slot.state
        .get(name)
        .ok_or_else(|| Error::invalid(op, format!("internal error: parameter state lacks {name}")))
}

fn adam(
    op: &str,
    hp: &Hyperparams,
    slots: &mut [Slot],
    decoupled: bool,
    amp: AmpInputs,
    lr_tensor: Option<&Tensor>,
) -> Result<()> {
    for slot in slots.iter_mut() {
        check_fusable(op, slot)?;
        let missing = slot.state.is_empty() || (hp.amsgrad && !slot.state.contains_key("max_exp_avg_sq"));
        if missing && lr_tensor.is_some() {
            return Err(Error::invalid(op, STATE_WHILE_RECORDING));
        }
        init_adam_state(op, slot, hp.amsgrad)?;
    }
    let mut lists = AdamLists {
        params: Vec::with_capacity(slots.len()),
        grads: Vec::with_capacity(slots.len()),
        exp_avgs: Vec::with_capacity(slots.len()),
        exp_avg_sqs: Vec::with_capacity(slots.len()),
        max_exp_avg_sqs: Vec::new(),
        steps: Vec::with_capacity(slots.len()),
    };
    for slot in slots.iter() {
        lists.params.push(slot.param);
        lists.grads.push(slot.grad.shallow_clone());
        lists.exp_avgs.push(state(op, slot, "exp_avg")?);
        lists.exp_avg_sqs.push(state(op, slot, "exp_avg_sq")?);
        lists.steps.push(state(op, slot, "step")?);
        if hp.amsgrad {
            lists.max_exp_avg_sqs.push(state(op, slot, "max_exp_avg_sq")?);
        }
    }
    let scalars = AdamScalars {
        lr: hp.lr,
        lr_tensor,
        betas: hp.betas,
        weight_decay: hp.weight_decay,
        eps: hp.eps,
        amsgrad: hp.amsgrad,
        maximize: hp.maximize,
        decoupled,
    };
    kernels::fused_adam(op, &lists, &scalars, amp)
}

/// torch.optim.SGD: with momentum, a parameter's first step initialises its buffer from
/// the gradient. Parameters stepping for the first time and the others go to separate
/// kernel calls, so each gets the right rule even when they first got gradients at different steps.
fn sgd(op: &str, hp: &Hyperparams, slots: &mut [Slot], amp: AmpInputs, lr_tensor: Option<&Tensor>) -> Result<()> {
    for slot in slots.iter() {
        check_fusable(op, slot)?;
    }
    let scalars = SgdScalars {
        lr: hp.lr,
        lr_tensor,
        momentum: hp.momentum,
        dampening: hp.dampening,
        weight_decay: hp.weight_decay,
        nesterov: hp.nesterov,
        maximize: hp.maximize,
    };
    if hp.momentum == 0.0 {
        let params: Vec<&Tensor> = slots.iter().map(|s| s.param).collect();
        let grads: Vec<Tensor> = slots.iter().map(|s| s.grad.shallow_clone()).collect();
        return kernels::fused_sgd(op, &params, &grads, &[], &scalars, false, amp);
    }
    let (fresh, seasoned): (Vec<&mut Slot>, Vec<&mut Slot>) =
        slots.iter_mut().partition(|s| !s.state.contains_key("momentum_buffer"));
    if !fresh.is_empty() && lr_tensor.is_some() {
        return Err(Error::invalid(op, STATE_WHILE_RECORDING));
    }
    if !seasoned.is_empty() {
        let params: Vec<&Tensor> = seasoned.iter().map(|s| s.param).collect();
        let grads: Vec<Tensor> = seasoned.iter().map(|s| s.grad.shallow_clone()).collect();
        let buffers = seasoned
            .iter()
            .map(|s| state(op, s, "momentum_buffer"))
            .collect::<Result<Vec<_>>>()?;
        kernels::fused_sgd(op, &params, &grads, &buffers, &scalars, false, amp)?;
    }
    if !fresh.is_empty() {
        // PyTorch allocates these uninitialised; zeros keep a step skipped by `found_inf`
        // from leaving garbage behind (the kernel overwrites them otherwise).
        let buffers = fresh
            .iter()
            .map(|s| s.grad.f_zeros_like().map_err(Error::on(op, &s.grad)))
            .collect::<Result<Vec<_>>>()?;
        let params: Vec<&Tensor> = fresh.iter().map(|s| s.param).collect();
        let grads: Vec<Tensor> = fresh.iter().map(|s| s.grad.shallow_clone()).collect();
        let refs: Vec<&Tensor> = buffers.iter().collect();
        kernels::fused_sgd(op, &params, &grads, &refs, &scalars, true, amp)?;
        for (slot, buffer) in fresh.into_iter().zip(buffers) {
            slot.state.insert("momentum_buffer".into(), buffer);
        }
    }
    Ok(())
}
