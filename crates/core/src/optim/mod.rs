//! Optimizers (SGD, Adam, AdamW with PyTorch's update rules, on libtorch's fused kernels),
//! their state dicts, and gradient clipping. Learning-rate schedules are scalar arithmetic
//! and live in the TypeScript facade; they write `lr` through `Optimizer::set_options`.

mod clip;
pub mod kernels;
mod optimizer;
mod options;
mod state_dict;
mod update;

pub use clip::{clip_grad_norm, clip_grad_value};
pub use kernels::AmpInputs;
pub use optimizer::{GroupSpec, Optimizer, ParamGroup};
pub use options::{Algorithm, Hyperparams, OptionsPatch};
pub use state_dict::{GroupState, StateDict};
pub use update::{apply as apply_update, Slot};

/// One parameter's state by PyTorch's names ("step", "exp_avg", "momentum_buffer", ...).
pub type ParamState = std::collections::BTreeMap<String, tch::Tensor>;

#[cfg(test)]
mod tests;
