//! Data-parallel communication through PyTorch's c10d (TCPStore + Gloo, via the
//! C++ shim): one process group per process, collectives with readable errors,
//! and the gradient all-reduce of data-parallel training.

mod collectives;
mod ddp;
mod group;
mod reducer;

pub use collectives::{all_gather, all_gather_bytes, all_reduce, barrier, broadcast_, Reduce};
pub use ddp::broadcast_parameters;
pub use group::{destroy, init, is_initialized, world, GroupConfig};
pub use reducer::Reducer;
