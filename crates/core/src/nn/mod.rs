//! Neural-network building blocks: the `Layer` trait, the layers the engine runs
//! natively (so a stack of them is one call from the host), functional ops,
//! initialisers, and parameter state (load in place, move keeping identity).

pub mod attention;
pub mod functional;
pub mod init;
pub mod layers;
pub mod param;
pub mod sequential;

use std::rc::Rc;
use tch::{Device, Kind, Tensor};

use crate::Result;
pub use attention::CausalSelfAttention;
pub use layers::{Conv2d, Dropout, Embedding, Flatten, Gelu, LayerNorm, Linear, MaxPool2d, Relu};
pub use param::Param;
pub use sequential::Sequential;

/// Where new parameters are created, and with which dtype.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub kind: Kind,
    pub device: Device,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            kind: Kind::Float,
            device: Device::Cpu,
        }
    }
}

/// A module the engine runs natively. Layers are shared (`Rc`) so that a container
/// and the host-side wrapper of a child refer to the same parameters.
pub trait Layer {
    /// The PyTorch class name (`Linear`, `Conv2d`, ...), used in error messages.
    fn name(&self) -> &'static str;

    /// Applies the layer. `train` selects training behaviour (dropout active).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// `forward`, a float16 or bfloat16 output then converted to float32: what mixed
    /// precision's model wrapper returns. A container may convert inside its last node.
    fn forward_float32(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        to_float32(self.forward(x, train)?)
    }

    /// This layer's own parameters (not its children's), by PyTorch name; absent ones
    /// (a Linear without bias) are `None`.
    fn params(&self) -> Vec<(&'static str, Option<&Param>)> {
        Vec::new()
    }

    /// Direct children, by PyTorch name.
    fn children(&self) -> Vec<(String, Rc<dyn Layer>)> {
        Vec::new()
    }

    /// The parameters this layer and its children multiply through `linear` (a Linear's weight
    /// and bias), which a chain converts ahead under autocast (`Sequential::forward`).
    fn linear_weights(&self) -> Vec<Tensor> {
        self.children()
            .iter()
            .flat_map(|(_, child)| child.linear_weights())
            .collect()
    }

    /// What this layer is in a chain of linear layers run as one autograd node
    /// (`Sequential::forward`): a Linear or a ReLU; other layers are none.
    fn link(&self) -> Option<functional::Link> {
        None
    }

    /// Own parameters as shallow clones (same tensor, same gradient), absent ones skipped.
    fn own_parameters(&self) -> Vec<(&'static str, Tensor)> {
        self.params()
            .into_iter()
            .filter_map(|(name, p)| p.map(|p| (name, p.share())))
            .collect()
    }

    /// Replaces own parameter `name` by `value` (shared, not copied), e.g. to tie weights.
    fn set_parameter(&self, name: &str, value: &Tensor) -> Result<()> {
        let params = self.params();
        let Some((_, slot)) = params.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
            return Err(crate::Error::invalid(
                "setParameter",
                format!("{} has no parameter \"{name}\" (it has {names:?})", self.name()),
            ));
        };
        match slot {
            Some(p) => p.replace(self.name(), name, value),
            None => Err(crate::Error::invalid(
                "setParameter",
                format!(
                    "{} was built without \"{name}\"; it cannot be set afterwards",
                    self.name()
                ),
            )),
        }
    }

    /// Every parameter of this layer and its descendants, with dotted names
    /// (`0.weight`, `qkv.bias`), in PyTorch's order: own first, then children's.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .own_parameters()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        for (child_name, child) in self.children() {
            for (n, t) in child.named_parameters() {
                out.push((format!("{child_name}.{n}"), t));
            }
        }
        out
    }
}

/// `y` as float32 if it is float16 or bfloat16; itself otherwise.
pub(crate) fn to_float32(y: Tensor) -> Result<Tensor> {
    if matches!(y.kind(), Kind::Half | Kind::BFloat16) {
        y.f_to_kind(Kind::Float)
            .map_err(|e| crate::Error::torch("forward", vec![y.size()], e))
    } else {
        Ok(y)
    }
}

/// Serialises tests that draw from the global generator, so seeded draws stay exact
/// while the test harness runs tests on several threads.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
