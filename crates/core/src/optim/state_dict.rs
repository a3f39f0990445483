//! Optimizer state dicts, PyTorch's layout as plain data for a checkpoint writer: state
//! tensors keyed "<param index>.<name>" and, per group, its hyperparameters and param indices.
//! Loading checks everything before changing anything.

use super::optimizer::Optimizer;
use super::options::{Algorithm, Hyperparams, OptionsPatch};
use super::ParamState;
use crate::tensor::shapes;
use crate::{Error, Result};
use std::collections::HashMap;
use tch::{Kind, Tensor};

pub struct GroupState {
    pub options: OptionsPatch,
    /// The indices of the group's parameters (state keys use them).
    pub params: Vec<i64>,
}

pub struct StateDict {
    /// ("<param index>.<name>", tensor), e.g. ("0.exp_avg", ...).
    pub state: Vec<(String, Tensor)>,
    pub param_groups: Vec<GroupState>,
}

impl Optimizer {
    /// The live state (shallow clones: the next `step` changes these tensors; copy them to keep a snapshot).
    pub fn state_dict(&self) -> StateDict {
        let mut state = Vec::new();
        for (index, param_state) in self.state.iter().enumerate() {
            for (name, tensor) in param_state {
                state.push((format!("{index}.{name}"), tensor.shallow_clone()));
            }
        }
        let mut next = 0i64;
        let param_groups = self
            .groups
            .iter()
            .map(|group| {
                let count = group.params.len() as i64;
                let params = (next..next + count).collect();
                next += count;
                GroupState {
                    options: group.hyper.to_patch(self.algorithm()),
                    params,
                }
            })
            .collect();
        StateDict { state, param_groups }
    }

    /// Replaces hyperparameters and state with copies of those in `sd`, matching parameters by
    /// position in their groups (as PyTorch does). Throws, changing nothing, on any mismatch.
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let op = format!("{}.loadStateDict", self.name());
        let (hypers, saved_to_flat) = self.match_groups(&op, sd)?;
        let params: Vec<&Tensor> = self.indexed_params().map(|(_, p)| p).collect();
        let mut states: Vec<ParamState> = params.iter().map(|_| ParamState::new()).collect();
        for (key, value) in &sd.state {
            let (index, name) = parse_key(&op, key)?;
            let flat = *saved_to_flat.get(&index).ok_or_else(|| {
                Error::invalid(
                    &op,
                    format!("state {key} is for parameter {index}, which no param group lists"),
                )
            })?;
            let names = self.algorithm().state_names();
            if !names.contains(&name) {
                return Err(Error::invalid(
                    &op,
                    format!(
                        "unexpected state {key}: {} keeps {} per parameter",
                        self.name(),
                        names.join(", ")
                    ),
                ));
            }
            let copy = state_copy(&op, key, name, value, params[flat])?;
            states[flat].insert(name.to_string(), copy);
        }
        for (flat, state) in states.iter().enumerate() {
            check_complete(&op, self.algorithm(), flat, state)?;
        }
        for (group, hyper) in self.groups.iter_mut().zip(hypers) {
            group.hyper = hyper;
        }
        self.state = states;
        Ok(())
    }

    /// Checks group and parameter counts, applies each group's saved options to a copy of its
    /// hyperparameters, and maps saved parameter indices to flat indices.
    fn match_groups(&self, op: &str, sd: &StateDict) -> Result<(Vec<Hyperparams>, HashMap<i64, usize>)> {
        if sd.param_groups.len() != self.groups.len() {
            return Err(Error::invalid(
                op,
                format!(
                    "the state dict has {} param groups but this optimizer has {}",
                    sd.param_groups.len(),
                    self.groups.len()
                ),
            ));
        }
        let mut hypers = Vec::with_capacity(self.groups.len());
        let mut saved_to_flat = HashMap::new();
        let mut flat = 0usize;
        for (g, (saved, group)) in sd.param_groups.iter().zip(&self.groups).enumerate() {
            if saved.params.len() != group.params.len() {
                return Err(Error::invalid(
                    op,
                    format!(
                        "param group {g} has {} parameters in the state dict but {} in this optimizer",
                        saved.params.len(),
                        group.params.len()
                    ),
                ));
            }
            let group_op = format!("{op}: param group {g}");
            hypers.push(group.hyper.patched(self.algorithm(), &saved.options, &group_op)?);
            for &index in &saved.params {
                if saved_to_flat.insert(index, flat).is_some() {
                    return Err(Error::invalid(
                        op,
                        format!("parameter index {index} appears twice in the state dict's param groups"),
                    ));
                }
                flat += 1;
            }
        }
        Ok((hypers, saved_to_flat))
    }
}

/// "12.exp_avg" → (12, "exp_avg").
fn parse_key<'a>(op: &str, key: &'a str) -> Result<(i64, &'a str)> {
    key.split_once('.')
        .and_then(|(index, name)| Some((index.parse::<i64>().ok()?, name)))
        .ok_or_else(|| {
            Error::invalid(
                op,
                format!("state key {key:?} is not of the form \"<param index>.<name>\""),
            )
        })
}

/// A copy of `value` cast as PyTorch's `_process_value_according_to_param_policy` does: `step`
/// to a float32 scalar on the parameter's device (as fused optimizers keep it), other state to
/// the parameter's dtype and device. Copies, so the caller's tensors are never stepped.
fn state_copy(op: &str, key: &str, name: &str, value: &Tensor, param: &Tensor) -> Result<Tensor> {
    let fail = |e| Error::torch(op, shapes(&[value, param]), e);
    if name == "step" {
        if value.numel() != 1 {
            return Err(Error::invalid(
                op,
                format!("state {key} must hold one number, got shape {:?}", value.size()),
            ));
        }
        let step = value.f_reshape([]).map_err(fail)?;
        return step
            .f_to_kind(Kind::Float)
            .and_then(|s| s.f_to_device(param.device()))
            .and_then(|s| s.f_detach_copy())
            .map_err(fail);
    }
    if value.size() != param.size() {
        return Err(Error::invalid(
            op,
            format!(
                "state {key} has shape {:?} but its parameter has shape {:?}",
                value.size(),
                param.size()
            ),
        ));
    }
    value
        .f_to_kind(param.kind())
        .and_then(|v| v.f_to_device(param.device()))
        .and_then(|v| v.f_detach_copy())
        .map_err(fail)
}

/// Adam's state is all or nothing (its running max may be missing: it starts at zeros).
fn check_complete(op: &str, algorithm: Algorithm, flat: usize, state: &ParamState) -> Result<()> {
    if state.is_empty() || algorithm == Algorithm::Sgd {
        return Ok(());
    }
    let missing: Vec<&str> = ["step", "exp_avg", "exp_avg_sq"]
        .into_iter()
        .filter(|n| !state.contains_key(*n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!(
            "parameter {flat} has state {} but lacks {}",
            state.keys().cloned().collect::<Vec<_>>().join(", "),
            missing.join(", ")
        ),
    ))
}
