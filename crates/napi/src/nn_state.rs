//! Parameter state for modules: load values in place, move to a device keeping
//! identity, drop gradients.

use accelerate_core::nn::param;
use napi::Result;
use napi_derive::napi;

use crate::convert::{guarded, parse_device, with_all, with_all_parameters};
use crate::tensor::Tensor;

/// Copies `sources[i]` into `targets[i]` (named `keys[i]`) after checking every shape.
#[napi]
pub fn nn_load_in_place(keys: Vec<String>, targets: Vec<Tensor>, sources: Vec<Tensor>) -> Result<()> {
    const OP: &str = "loadStateDict";
    guarded(OP, || {
        if keys.len() != targets.len() || keys.len() != sources.len() {
            return Err(accelerate_core::Error::invalid(
                OP,
                "keys, targets and sources differ in length",
            ));
        }
        with_all(OP, &targets, |dst| {
            with_all(OP, &sources, |src| {
                let entries: Vec<(&str, &tch::Tensor, &tch::Tensor)> = keys
                    .iter()
                    .zip(dst.iter().zip(src))
                    .map(|(k, (d, s))| (k.as_str(), *d, *s))
                    .collect();
                param::load_in_place(&entries)
            })
        })
    })
}

/// Moves each tensor (and its gradient) to `device`, in place.
#[napi]
pub fn nn_move_in_place(tensors: Vec<Tensor>, device: String) -> Result<()> {
    guarded("to", || {
        let device = parse_device("to", Some(&device))?;
        with_all("to", &tensors, |ts| param::move_in_place(ts, device))
    })
}

/// Makes the next backward create new gradient accumulators for these parameters (compileStep).
#[napi]
pub fn nn_reset_grad_accumulators(tensors: Vec<Tensor>) -> Result<()> {
    guarded("compileStep", || {
        with_all_parameters("compileStep", &tensors, |ts| {
            accelerate_core::shim::reset_grad_accumulators("compileStep", ts)
        })
    })
}

/// Drops each tensor's gradient (`grad` becomes null).
#[napi]
pub fn nn_clear_grads(tensors: Vec<Tensor>) -> Result<()> {
    guarded("zeroGrad", || {
        with_all_parameters("zeroGrad", &tensors, param::clear_grads)
    })
}
