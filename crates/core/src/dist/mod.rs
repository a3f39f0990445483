//! Data-parallel communication through PyTorch's c10d (TCPStore + Gloo, via the
//! C++ shim): one process group per process, collectives with readable errors,
//! the gradient all-reduce of data-parallel training, and ZeRO's partitioned optimizer.

mod collectives;
mod ddp;
mod group;
mod reducer;
mod zero;
mod zero3;

pub use collectives::{
    all_gather, all_gather_bytes, all_gather_into, all_reduce, barrier, broadcast_, reduce_scatter_into, Reduce,
};
pub use ddp::broadcast_parameters;
pub use group::{destroy, init, is_initialized, world, GroupConfig};
pub use reducer::Reducer;
pub use zero::ZeroOptimizer;
pub use zero3::{clip_sharded_grad_norm, Held, Placement, Sharder, Zero3Optimizer};
