//! The optimizer algorithms and their per-group hyperparameters: PyTorch's defaults,
//! its checks on values, and partial updates (constructor options, `paramGroups[i].lr = x`).

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sgd,
    Adam,
    /// Adam with decoupled weight decay (torch.optim.AdamW).
    AdamW,
}

impl Algorithm {
    /// The class name users see, used in every error message.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sgd => "SGD",
            Algorithm::Adam => "Adam",
            Algorithm::AdamW => "AdamW",
        }
    }

    /// torch 2.11's defaults.
    pub fn defaults(self) -> Hyperparams {
        Hyperparams {
            lr: 1e-3,
            weight_decay: if self == Algorithm::AdamW { 1e-2 } else { 0.0 },
            maximize: false,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            betas: (0.9, 0.999),
            eps: 1e-8,
            amsgrad: false,
        }
    }

    /// The option names (as users spell them) that apply to this algorithm.
    pub fn option_names(self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd => &["lr", "momentum", "dampening", "weightDecay", "nesterov", "maximize"],
            Algorithm::Adam | Algorithm::AdamW => &["lr", "betas", "eps", "weightDecay", "amsgrad", "maximize"],
        }
    }

    /// The per-parameter state this algorithm keeps, by PyTorch's names.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd => &["momentum_buffer"],
            Algorithm::Adam | Algorithm::AdamW => &["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        }
    }
}

/// Every hyperparameter of one param group; only those of the group's algorithm matter.
#[derive(Clone, Debug, PartialEq)]
pub struct Hyperparams {
    pub lr: f64,
    pub weight_decay: f64,
    pub maximize: bool,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub betas: (f64, f64),
    pub eps: f64,
    pub amsgrad: bool,
}

/// Some hyperparameters, as given by a user or read from a state dict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptionsPatch {
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

impl OptionsPatch {
    /// The names of the options this patch sets.
    fn names(&self) -> Vec<&'static str> {
        let set = [
            ("lr", self.lr.is_some()),
            ("weightDecay", self.weight_decay.is_some()),
            ("maximize", self.maximize.is_some()),
            ("momentum", self.momentum.is_some()),
            ("dampening", self.dampening.is_some()),
            ("nesterov", self.nesterov.is_some()),
            ("betas", self.betas.is_some()),
            ("eps", self.eps.is_some()),
            ("amsgrad", self.amsgrad.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
    }
}

/// `value` must be a number >= 0 (NaN fails, as in PyTorch's `0.0 <= value`).
fn non_negative(op: &str, name: &str, value: f64) -> Result<()> {
    if value >= 0.0 {
        return Ok(());
    }
    Err(Error::invalid(op, format!("invalid {name} {value}: it must be >= 0")))
}

impl Hyperparams {
    /// These hyperparameters with `patch` applied, checked for `algorithm`; `op` names the
    /// caller in errors (e.g. "AdamW" or "AdamW: param group 1").
    pub fn patched(&self, algorithm: Algorithm, patch: &OptionsPatch, op: &str) -> Result<Hyperparams> {
        let allowed = algorithm.option_names();
        if let Some(bad) = patch.names().into_iter().find(|n| !allowed.contains(n)) {
            return Err(Error::invalid(
                op,
                format!(
                    "unknown option {bad}; {} takes {}",
                    algorithm.name(),
                    allowed.join(", ")
                ),
            ));
        }
        let betas = match &patch.betas {
            None => self.betas,
            Some(b) if b.len() == 2 => (b[0], b[1]),
            Some(b) => return Err(Error::invalid(op, format!("betas must be 2 numbers, got {}", b.len()))),
        };
        let next = Hyperparams {
            lr: patch.lr.unwrap_or(self.lr),
            weight_decay: patch.weight_decay.unwrap_or(self.weight_decay),
            maximize: patch.maximize.unwrap_or(self.maximize),
            momentum: patch.momentum.unwrap_or(self.momentum),
            dampening: patch.dampening.unwrap_or(self.dampening),
            nesterov: patch.nesterov.unwrap_or(self.nesterov),
            betas,
            eps: patch.eps.unwrap_or(self.eps),
            amsgrad: patch.amsgrad.unwrap_or(self.amsgrad),
        };
        next.check(algorithm, op)?;
        Ok(next)
    }

    /// PyTorch's constructor checks.
    fn check(&self, algorithm: Algorithm, op: &str) -> Result<()> {
        non_negative(op, "lr", self.lr)?;
        non_negative(op, "weightDecay", self.weight_decay)?;
        match algorithm {
            Algorithm::Sgd => {
                non_negative(op, "momentum", self.momentum)?;
                if !self.dampening.is_finite() {
                    return Err(Error::invalid(op, format!("invalid dampening {}", self.dampening)));
                }
                if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "nesterov needs momentum > 0 and dampening 0, got momentum {} and dampening {}",
                            self.momentum, self.dampening
                        ),
                    ));
                }
            }
            Algorithm::Adam | Algorithm::AdamW => {
                non_negative(op, "eps", self.eps)?;
                for (i, beta) in [self.betas.0, self.betas.1].into_iter().enumerate() {
                    if !(0.0..1.0).contains(&beta) {
                        return Err(Error::invalid(
                            op,
                            format!("invalid betas[{i}] {beta}: it must be in [0, 1)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The options of `algorithm`, all set: what a state dict records for a group.
    pub fn to_patch(&self, algorithm: Algorithm) -> OptionsPatch {
        let common = OptionsPatch {
            lr: Some(self.lr),
            weight_decay: Some(self.weight_decay),
            maximize: Some(self.maximize),
            ..OptionsPatch::default()
        };
        match algorithm {
            Algorithm::Sgd => OptionsPatch {
                momentum: Some(self.momentum),
                dampening: Some(self.dampening),
                nesterov: Some(self.nesterov),
                ..common
            },
            Algorithm::Adam | Algorithm::AdamW => OptionsPatch {
                betas: Some(vec![self.betas.0, self.betas.1]),
                eps: Some(self.eps),
                amsgrad: Some(self.amsgrad),
                ..common
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_defaults_decay_weights() {
        assert_eq!(Algorithm::AdamW.defaults().weight_decay, 0.01);
        assert_eq!(Algorithm::Adam.defaults().weight_decay, 0.0);
    }

    #[test]
    fn bad_values_name_the_option() {
        let base = Algorithm::Adam.defaults();
        let patch = OptionsPatch {
            betas: Some(vec![0.9, 1.0]),
            ..Default::default()
        };
        let err = base.patched(Algorithm::Adam, &patch, "Adam").unwrap_err();
        assert_eq!(err.to_string(), "Adam: invalid betas[1] 1: it must be in [0, 1)");
        let patch = OptionsPatch {
            lr: Some(-0.1),
            ..Default::default()
        };
        let err = base.patched(Algorithm::Adam, &patch, "Adam").unwrap_err();
        assert!(err.to_string().contains("invalid lr -0.1"));
    }

    #[test]
    fn options_of_another_algorithm_are_refused() {
        let patch = OptionsPatch {
            momentum: Some(0.9),
            ..Default::default()
        };
        let err = Algorithm::AdamW
            .defaults()
            .patched(Algorithm::AdamW, &patch, "AdamW")
            .unwrap_err();
        assert!(err.to_string().contains("unknown option momentum"));
    }

    #[test]
    fn nesterov_needs_momentum() {
        let patch = OptionsPatch {
            nesterov: Some(true),
            ..Default::default()
        };
        let err = Algorithm::Sgd
            .defaults()
            .patched(Algorithm::Sgd, &patch, "SGD")
            .unwrap_err();
        assert!(err.to_string().contains("nesterov needs momentum > 0"));
    }
}
