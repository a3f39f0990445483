//! Bindings for optimizers and gradient clipping: JS options and state dicts to and from
//! the core's types. Learning-rate schedulers are pure TypeScript.

use accelerate_core::optim::{self, Algorithm, GroupSpec, GroupState, OptionsPatch, StateDict};
use accelerate_core::Error;
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, with_all, wrap};
use crate::tensor::Tensor;

/// Hyperparameters of a param group; each optimizer takes its own subset.
#[napi(object)]
#[derive(Default)]
pub struct OptimizerOptions {
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub maximize: Option<bool>,
    pub momentum: Option<f64>,
    pub dampening: Option<f64>,
    pub nesterov: Option<bool>,
    pub betas: Option<Vec<f64>>,
    pub eps: Option<f64>,
    pub amsgrad: Option<bool>,
}

/// Both directions between the JS options object and the core's patch, field by field.
macro_rules! same_fields {
    ($a:ident <-> $b:ident { $($field:ident),* $(,)? }) => {
        impl From<$a> for $b {
            fn from(o: $a) -> $b {
                $b { $($field: o.$field),* }
            }
        }
        impl From<$b> for $a {
            fn from(o: $b) -> $a {
                $a { $($field: o.$field),* }
            }
        }
    };
}

same_fields!(OptimizerOptions <-> OptionsPatch {
    lr, weight_decay, maximize, momentum, dampening, nesterov, betas, eps, amsgrad,
});

/// A param group in a state dict: its hyperparameters and its parameters' indices.
#[napi(object)]
pub struct ParamGroupState {
    pub options: OptimizerOptions,
    pub params: Vec<i64>,
}

/// An optimizer state dict with its state as parallel lists (keys like "0.exp_avg").
#[napi(object, object_from_js = false)]
pub struct OptimizerStateLists {
    pub keys: Vec<String>,
    pub tensors: Vec<Tensor>,
    pub param_groups: Vec<ParamGroupState>,
}

fn parse_algorithm(name: &str) -> accelerate_core::Result<Algorithm> {
    match name {
        "SGD" => Ok(Algorithm::Sgd),
        "Adam" => Ok(Algorithm::Adam),
        "AdamW" => Ok(Algorithm::AdamW),
        other => Err(Error::invalid(
            "Optimizer",
            format!("unknown algorithm {other:?}; expected SGD, Adam or AdamW"),
        )),
    }
}

/// The engine's optimizer: holds the parameters (shared with their JS tensors) and their state.
#[napi]
pub struct OptimizerCore {
    pub(crate) inner: optim::Optimizer,
}

#[napi]
impl OptimizerCore {
    /// `params` holds every group's parameters in order; group i has `groupSizes[i]` of them.
    #[napi(constructor)]
    pub fn new(
        algorithm: String,
        params: Vec<Tensor>,
        group_sizes: Vec<u32>,
        options: OptimizerOptions,
        group_options: Vec<OptimizerOptions>,
    ) -> Result<Self> {
        guarded(&algorithm, || {
            let algorithm = parse_algorithm(&algorithm)?;
            let op = algorithm.name();
            let total: usize = group_sizes.iter().map(|&n| n as usize).sum();
            if total != params.len() || group_sizes.len() != group_options.len() {
                return Err(Error::invalid(op, "group sizes do not match the parameters"));
            }
            let mut rest = params.as_slice();
            let mut groups = Vec::with_capacity(group_sizes.len());
            for (size, options) in group_sizes.iter().zip(group_options) {
                let (head, tail) = rest.split_at(*size as usize);
                rest = tail;
                let params = head
                    .iter()
                    .map(|t| Ok(t.handle.get(op)?.shallow_clone()))
                    .collect::<accelerate_core::Result<Vec<_>>>()?;
                groups.push(GroupSpec {
                    params,
                    options: options.into(),
                });
            }
            let inner = optim::Optimizer::new(algorithm, &options.into(), groups)?;
            Ok(OptimizerCore { inner })
        })
    }

    /// Adds a param group; options it does not set come from the constructor's.
    #[napi]
    pub fn add_param_group(&mut self, params: Vec<Tensor>, options: OptimizerOptions) -> Result<()> {
        let op = format!("{}.addParamGroup", self.inner.name());
        guarded(&op, || {
            let params = params
                .iter()
                .map(|t| Ok(t.handle.get(&op)?.shallow_clone()))
                .collect::<accelerate_core::Result<Vec<_>>>()?;
            self.inner.add_group(GroupSpec {
                params,
                options: options.into(),
            })
        })
    }

    #[napi]
    pub fn step(&mut self) -> Result<()> {
        guarded("step", || self.inner.step())
    }

    #[napi]
    pub fn zero_grad(&self, set_to_none: bool) -> Result<()> {
        guarded("zeroGrad", || self.inner.zero_grad(set_to_none))
    }

    /// While `on`, steps read the learning rate from a tensor (a step being recorded by compileStep).
    #[napi]
    pub fn record_lr(&mut self, on: bool) -> Result<()> {
        guarded("compileStep", || self.inner.record_lr(on))
    }

    /// Where the parameters and their state live, as a fingerprint (compileStep records again when it changes).
    #[napi]
    pub fn storage_fingerprint(&self) -> String {
        format!("{:016x}", self.inner.storage_fingerprint())
    }

    /// Writes the current learning rates where a recorded step reads them.
    #[napi]
    pub fn write_lr(&self) -> Result<()> {
        guarded("compileStep", || self.inner.write_lr())
    }

    /// Bytes of per-parameter state (moments, momentum buffers) this optimizer holds.
    #[napi(getter)]
    pub fn state_bytes(&self) -> f64 {
        self.inner.state_bytes() as f64
    }

    #[napi(getter)]
    pub fn num_groups(&self) -> u32 {
        self.inner.groups().len() as u32
    }

    /// All hyperparameters of group `group`.
    #[napi]
    pub fn group_options(&self, group: u32) -> Result<OptimizerOptions> {
        guarded("paramGroups", || {
            let algorithm = self.inner.algorithm();
            Ok(self.inner.hyperparams(group as usize)?.to_patch(algorithm).into())
        })
    }

    /// Changes the given hyperparameters of group `group` (checked like the constructor's).
    #[napi]
    pub fn set_group_options(&mut self, group: u32, options: OptimizerOptions) -> Result<()> {
        guarded("paramGroups", || {
            self.inner.set_options(group as usize, &options.into())
        })
    }

    #[napi]
    pub fn state_dict(&self, env: Env) -> Result<OptimizerStateLists> {
        guarded("stateDict", || {
            let sd = self.inner.state_dict();
            let (keys, tensors): (Vec<String>, Vec<tch::Tensor>) = sd.state.into_iter().unzip();
            Ok(OptimizerStateLists {
                keys,
                tensors: tensors.into_iter().map(|t| wrap(&env, t)).collect(),
                param_groups: sd
                    .param_groups
                    .into_iter()
                    .map(|g| ParamGroupState {
                        options: g.options.into(),
                        params: g.params,
                    })
                    .collect(),
            })
        })
    }

    #[napi]
    pub fn load_state_dict(
        &mut self,
        keys: Vec<String>,
        tensors: Vec<Tensor>,
        param_groups: Vec<ParamGroupState>,
    ) -> Result<()> {
        let op = format!("{}.loadStateDict", self.inner.name());
        guarded(&op, || {
            if keys.len() != tensors.len() {
                return Err(Error::invalid(&op, "state keys and tensors differ in number"));
            }
            let inner = &mut self.inner;
            with_all(&op, &tensors, |ts| {
                let state = keys.into_iter().zip(ts.iter().map(|t| t.shallow_clone())).collect();
                let param_groups = param_groups
                    .into_iter()
                    .map(|g| GroupState {
                        options: g.options.into(),
                        params: g.params,
                    })
                    .collect();
                inner.load_state_dict(&StateDict { state, param_groups })
            })
        })
    }
}

/// Scales gradients so their total norm is at most `maxNorm`; returns the norm before clipping.
#[napi]
pub fn clip_grad_norm(params: Vec<Tensor>, max_norm: f64, norm_type: f64, error_if_nonfinite: bool) -> Result<f64> {
    guarded("clipGradNorm", || {
        with_all("clipGradNorm", &params, |ts| {
            optim::clip_grad_norm(ts, max_norm, norm_type, error_if_nonfinite)
        })
    })
}

/// Clamps every gradient element into [-value, value].
#[napi]
pub fn clip_grad_value(params: Vec<Tensor>, value: f64) -> Result<()> {
    guarded("clipGradValue", || {
        with_all("clipGradValue", &params, |ts| optim::clip_grad_value(ts, value))
    })
}
