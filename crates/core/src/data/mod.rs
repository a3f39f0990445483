//! Data loading: seeded sampling and data-parallel sharding of batch indices,
//! datasets of named tensors, and loaders that gather batches on a background thread.

pub mod dataset;
pub mod loader;
pub mod prefetch;
pub mod rng;
pub mod sampler;

pub use dataset::TensorDataset;
pub use loader::{IndexIter, Loader, LoaderState, TensorIter};
pub use sampler::{SamplerSpec, Shard};
