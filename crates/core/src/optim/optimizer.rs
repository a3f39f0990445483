//! The optimizer: param groups of shared parameters (shallow clones: same TensorImpl,
//! same gradient), per-parameter state by flat index (as PyTorch numbers them), and
//! `step` / `zero_grad`, which update parameters in place.

use super::kernels::{self, AmpInputs};
use super::options::{Algorithm, Hyperparams, OptionsPatch};
use super::update::{self, Slot};
use super::ParamState;
use crate::tensor::shapes;
use crate::{Error, Result};
use tch::Tensor;

pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub hyper: Hyperparams,
    /// The learning rate as a one-element tensor on the parameters' device, which a step
    /// recorded into a CUDA graph reads when it runs (see `record_lr`).
    lr_tensor: Option<Tensor>,
}

/// A param group as given to the constructor: its parameters and the options that differ
/// from the optimizer's.
pub struct GroupSpec {
    pub params: Vec<Tensor>,
    pub options: OptionsPatch,
}

pub struct Optimizer {
    algorithm: Algorithm,
    /// The constructor's options over the algorithm's defaults, for groups added later.
    defaults: Hyperparams,
    pub(super) groups: Vec<ParamGroup>,
    /// One entry per parameter, in group order; empty until its first step.
    pub(super) state: Vec<ParamState>,
    /// Steps read the learning rate from the groups' tensors (while a step is recorded).
    reading_lr_tensors: bool,
}

impl Optimizer {
    /// `options` overrides the algorithm's defaults for every group; each group's own
    /// options override those. Parameters are shared, not copied.
    pub fn new(algorithm: Algorithm, options: &OptionsPatch, groups: Vec<GroupSpec>) -> Result<Optimizer> {
        let name = algorithm.name();
        if groups.is_empty() {
            return Err(Error::invalid(name, "got an empty parameter list"));
        }
        let base = algorithm.defaults().patched(algorithm, options, name)?;
        let mut built = Vec::with_capacity(groups.len());
        for (g, spec) in groups.into_iter().enumerate() {
            let op = format!("{name}: param group {g}");
            let hyper = base.patched(algorithm, &spec.options, &op)?;
            built.push(ParamGroup {
                params: spec.params,
                hyper,
                lr_tensor: None,
            });
        }
        let optimizer = Optimizer {
            algorithm,
            defaults: base,
            state: (0..built.iter().map(|g| g.params.len()).sum())
                .map(|_| ParamState::new())
                .collect(),
            groups: built,
            reading_lr_tensors: false,
        };
        optimizer.check_leaves()?;
        optimizer.check_unique()?;
        Ok(optimizer)
    }

    /// Adds a param group; options it does not set come from the constructor's (as PyTorch's
    /// `add_param_group`).
    pub fn add_group(&mut self, spec: GroupSpec) -> Result<()> {
        let op = format!("{}.addParamGroup", self.name());
        let hyper = self.defaults.patched(self.algorithm, &spec.options, &op)?;
        let added = spec.params.len();
        self.groups.push(ParamGroup {
            params: spec.params,
            hyper,
            lr_tensor: None,
        });
        self.state.extend((0..added).map(|_| ParamState::new()));
        if let Err(err) = self.check_leaves().and_then(|_| self.check_unique()) {
            self.groups.pop();
            self.state.truncate(self.state.len() - added);
            return Err(err);
        }
        Ok(())
    }

    /// PyTorch refuses tensors computed from others: their `grad` is never filled in.
    fn check_leaves(&self) -> Result<()> {
        for (index, (group, param)) in self.indexed_params().enumerate() {
            let fail = |e| Error::torch(self.name(), shapes(&[param]), e);
            if !param.f_is_leaf().map_err(fail)? && !param.f_retains_grad().map_err(fail)? {
                return Err(Error::invalid(
                    self.name(),
                    format!(
                        "can't optimize parameter {index} (param group {group}, shape {:?}): it is not a leaf \
                         tensor but was computed from others; optimize the tensors it came from, or a detached copy",
                        param.size()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// PyTorch refuses a parameter in two groups; we also refuse one listed twice in a group,
    /// which would be stepped twice.
    fn check_unique(&self) -> Result<()> {
        let mut seen = std::collections::HashMap::new();
        for (index, (group, param)) in self.indexed_params().enumerate() {
            let id = kernels::identity(self.name(), param)?;
            if let Some((first, first_group)) = seen.insert(id, (index, group)) {
                return Err(Error::invalid(
                    self.name(),
                    format!(
                        "the same parameter appears twice: as parameter {first} (param group {first_group}) \
                         and as parameter {index} (param group {group})"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn name(&self) -> &'static str {
        self.algorithm.name()
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// (group index, parameter) for every parameter, in flat-index order.
    pub fn indexed_params(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.params.iter().map(move |p| (g, p)))
    }

    pub fn num_params(&self) -> usize {
        self.state.len()
    }

    /// The state of parameter `index` (flat, in group order).
    pub fn state(&self, index: usize) -> Option<&ParamState> {
        self.state.get(index)
    }

    /// Replaces the state of parameter `index` (a partitioned optimizer lends it whole state to save).
    pub fn set_param_state(&mut self, index: usize, state: ParamState) {
        if let Some(slot) = self.state.get_mut(index) {
            *slot = state;
        }
    }

    /// Bytes of per-parameter state (moments, momentum buffers, step counts) held now.
    pub fn state_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
        self.state.iter().flat_map(|s| s.values()).map(bytes).sum()
    }

    /// Takes the state of parameter `index`, leaving it empty.
    pub fn take_param_state(&mut self, index: usize) -> ParamState {
        self.state.get_mut(index).map(std::mem::take).unwrap_or_default()
    }

    fn group_index(&self, op: &str, group: usize) -> Result<usize> {
        if group < self.groups.len() {
            return Ok(group);
        }
        Err(Error::invalid(
            op,
            format!("no param group {group}: this {} has {}", self.name(), self.groups.len()),
        ))
    }

    pub fn hyperparams(&self, group: usize) -> Result<&Hyperparams> {
        let g = self.group_index(self.name(), group)?;
        Ok(&self.groups[g].hyper)
    }

    /// Changes some hyperparameters of one group (a scheduler setting `lr`, say), checked as in the constructor.
    pub fn set_options(&mut self, group: usize, patch: &OptionsPatch) -> Result<()> {
        let g = self.group_index(self.name(), group)?;
        let op = format!("{}: param group {g}", self.name());
        self.groups[g].hyper = self.groups[g].hyper.patched(self.algorithm, patch, &op)?;
        Ok(())
    }

    /// One optimization step over the parameters that have gradients.
    pub fn step(&mut self) -> Result<()> {
        self.step_with_amp(AmpInputs::default())
    }

    /// A step that unscales gradients by `amp.grad_scale` and is skipped where
    /// `amp.found_inf` is non-zero (for a gradient scaler).
    pub fn step_with_amp(&mut self, amp: AmpInputs) -> Result<()> {
        let op = format!("{}.step", self.name());
        let mut states = self.state.iter_mut();
        for group in &self.groups {
            let mut slots = Vec::with_capacity(group.params.len());
            for param in &group.params {
                let state = states
                    .next()
                    .ok_or_else(|| Error::invalid(&op, "internal error: state shorter than params"))?;
                let grad = param.f_grad().map_err(|e| Error::torch(&op, shapes(&[param]), e))?;
                if grad.defined() {
                    slots.push(Slot { param, grad, state });
                }
            }
            let lr = group.lr_tensor.as_ref().filter(|_| self.reading_lr_tensors);
            update::apply_reading_lr(&op, self.algorithm, &group.hyper, &mut slots, amp, lr)?;
        }
        Ok(())
    }

    /// While `on`, steps read each group's learning rate from a tensor on its parameters'
    /// device instead of taking the number: a step recorded into a CUDA graph then follows
    /// the learning rate that `write_lr` puts there before each replay. Turning it on writes
    /// the current rates.
    pub fn record_lr(&mut self, on: bool) -> Result<()> {
        self.reading_lr_tensors = on;
        if on {
            for group in &mut self.groups {
                if group.lr_tensor.is_none() {
                    let device = group.params.first().map_or(tch::Device::Cpu, Tensor::device);
                    let t = Tensor::f_zeros([], (tch::Kind::Float, device))
                        .map_err(|e| Error::torch("compileStep", vec![], e))?;
                    group.lr_tensor = Some(t);
                }
            }
            self.write_lr()?;
        }
        Ok(())
    }

    /// A fingerprint of where the parameters and their state live (their data pointers): a step
    /// recorded into a CUDA graph holds those addresses, so a change (a loaded state dict, a
    /// moved parameter, a new param group or new state) means recording it again.
    pub fn storage_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (index, param) in self.indexed_params() {
            (index, param.data_ptr() as usize).hash(&mut hasher);
            for (name, t) in self.state.get(index).into_iter().flatten() {
                (name, t.data_ptr() as usize).hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    /// Writes each group's learning rate into its tensor (before a recorded step is replayed).
    pub fn write_lr(&self) -> Result<()> {
        for group in &self.groups {
            if let Some(t) = &group.lr_tensor {
                t.shallow_clone()
                    .f_fill_(group.hyper.lr)
                    .map(drop)
                    .map_err(|e| Error::torch("compileStep", vec![], e))?;
            }
        }
        Ok(())
    }

    /// Resets gradients: to none (`set_to_none`, PyTorch's default) or to zeros in place.
    pub fn zero_grad(&self, set_to_none: bool) -> Result<()> {
        let params: Vec<&Tensor> = self.indexed_params().map(|(_, p)| p).collect();
        kernels::zero_grads(&format!("{}.zeroGrad", self.name()), &params, set_to_none)
    }
}
