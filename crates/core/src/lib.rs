//! Accelerate.ts engine: tensors, autograd, memory scopes, modules, optimizers,
//! mixed precision, data loading, checkpoints and collectives on libtorch via `tch`.
//! Nothing here knows about JavaScript.

pub mod amp;
pub mod checkpoint;
pub mod cuda;
pub mod data;
pub mod device;
pub mod dist;
pub mod dtype;
pub mod error;
pub mod memory;
pub mod nn;
pub mod optim;
pub mod profiler;
pub mod shim;
pub mod tensor;

pub use error::{Error, Result};
pub use tch;
