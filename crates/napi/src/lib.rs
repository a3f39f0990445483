//! Node bindings for accelerate-core: each function converts values, calls the
//! core, and turns its errors into JS `Error`s. No logic lives here.

mod amp;
mod checkpoint;
mod convert;
mod creation;
mod data;
mod dist;
mod fast;
mod int;
mod nn;
mod optim;
mod runtime;
mod tensor;
mod tensor_api;
mod tensor_ops;
mod zero;
mod zero3;

pub use tensor::{Tensor, TensorHandle};
