//! Bindings for data loading: the TensorDataset, the loader (sampling, sharding,
//! epoch progress) and its passes: index lists for JS datasets, or batches
//! gathered and prefetched in Rust for a TensorDataset.

use accelerate_core::data::{IndexIter, Loader, LoaderState, SamplerSpec, Shard, TensorDataset, TensorIter};
use accelerate_core::{device, Error};
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, wrap_all};
use crate::int::Int;
use crate::tensor::Tensor;

/// A count from JS (a size, an index, an epoch), which must not be negative.
fn count(op: &str, name: &str, value: impl Into<Int>) -> accelerate_core::Result<usize> {
    value.into().count(op, name)
}

#[napi(js_name = "NativeTensorDataset")]
pub struct NativeTensorDataset {
    inner: TensorDataset,
}

#[napi]
impl NativeTensorDataset {
    /// Holds (shares, does not copy) `tensors`, named by `names` in the same order.
    #[napi(constructor)]
    pub fn new(names: Vec<String>, tensors: Vec<Tensor>) -> Result<NativeTensorDataset> {
        guarded("TensorDataset", || {
            if names.len() != tensors.len() {
                return Err(Error::invalid(
                    "TensorDataset",
                    format!("{} names for {} tensors", names.len(), tensors.len()),
                ));
            }
            let named = names
                .into_iter()
                .zip(&tensors)
                .map(|(name, t)| Ok((name, t.handle.get("TensorDataset")?.shallow_clone())))
                .collect::<accelerate_core::Result<Vec<_>>>()?;
            Ok(NativeTensorDataset {
                inner: TensorDataset::new("TensorDataset", named)?,
            })
        })
    }

    #[napi(getter)]
    pub fn length(&self) -> i64 {
        self.inner.len() as i64
    }

    /// Row `index` of every tensor, in the order of the names.
    #[napi]
    pub fn get(&self, env: Env, index: i64) -> Result<Vec<Tensor>> {
        guarded("get", || Ok(wrap_all(&env, self.inner.get("get", index)?)))
    }
}

#[napi(object, object_to_js = false)]
pub struct NativeLoaderOptions {
    pub batch_size: Int,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: Int,
    pub num_processes: Int,
    pub process_index: Int,
    pub split_batches: bool,
    pub even_batches: bool,
    pub device: Option<String>,
}

#[napi(object)]
pub struct NativeLoaderState {
    pub epoch: i64,
    pub batches_seen: i64,
}

#[napi(js_name = "NativeDataLoader")]
pub struct NativeDataLoader {
    inner: Loader,
}

#[napi]
impl NativeDataLoader {
    #[napi(constructor)]
    pub fn new(dataset_length: Int, options: NativeLoaderOptions) -> Result<NativeDataLoader> {
        const OP: &str = "DataLoader";
        guarded(OP, || {
            let spec = SamplerSpec {
                batch_size: count(OP, "batchSize", options.batch_size)?,
                drop_last: options.drop_last,
                shuffle: options.shuffle,
                // Seeds are bit patterns: a negative JS seed is as good as any.
                seed: options.seed.count(OP, "seed")? as u64,
                shard: Shard {
                    num_processes: count(OP, "numProcesses", options.num_processes)?,
                    process_index: count(OP, "processIndex", options.process_index)?,
                    split_batches: options.split_batches,
                    even_batches: options.even_batches,
                },
            };
            let device = options.device.as_deref().map(|d| device::parse(OP, d)).transpose()?;
            let len = count(OP, "the dataset length", dataset_length)?;
            Ok(NativeDataLoader {
                inner: Loader::new(len, spec, device)?,
            })
        })
    }

    /// Batches this process gets per epoch.
    #[napi(getter)]
    pub fn length(&self) -> i64 {
        self.inner.len() as i64
    }

    #[napi(getter)]
    pub fn remainder(&self) -> i64 {
        self.inner.remainder()
    }

    #[napi(getter)]
    pub fn total_batch_size(&self) -> i64 {
        self.inner.spec().total_batch_size() as i64
    }

    #[napi(getter)]
    pub fn end_of_dataloader(&self) -> bool {
        self.inner.end_of_dataloader()
    }

    #[napi]
    pub fn set_epoch(&self, epoch: Int) -> Result<()> {
        guarded("setEpoch", || {
            self.inner.set_epoch(count("setEpoch", "epoch", epoch)? as u64);
            Ok(())
        })
    }

    #[napi]
    pub fn state(&self) -> NativeLoaderState {
        let LoaderState { epoch, batches_seen } = self.inner.state();
        NativeLoaderState {
            epoch: epoch as i64,
            batches_seen: batches_seen as i64,
        }
    }

    #[napi]
    pub fn load_state(&self, state: NativeLoaderState) -> Result<()> {
        const OP: &str = "loadStateDict";
        guarded(OP, || {
            self.inner.load_state(LoaderState {
                epoch: count(OP, "epoch", state.epoch)? as u64,
                batches_seen: count(OP, "batchesSeen", state.batches_seen)?,
            })
        })
    }

    /// Starts a pass that yields the dataset indices of each batch.
    #[napi]
    pub fn iter_indices(&self, skip: Int) -> Result<NativeIndexIterator> {
        guarded("DataLoader", || {
            Ok(NativeIndexIterator {
                inner: self.inner.iter_indices(count("DataLoader", "skip", skip)?),
            })
        })
    }

    /// Starts a pass whose batches a background thread gathers from `dataset`.
    #[napi]
    pub fn iter_tensors(&self, dataset: &NativeTensorDataset, skip: Int) -> Result<NativeTensorIterator> {
        guarded("DataLoader", || {
            let skip = count("DataLoader", "skip", skip)?;
            Ok(NativeTensorIterator {
                inner: self.inner.iter_tensors(&dataset.inner, skip)?,
            })
        })
    }
}

#[napi(js_name = "NativeIndexIterator")]
pub struct NativeIndexIterator {
    inner: IndexIter,
}

#[napi]
impl NativeIndexIterator {
    /// The next batch's dataset indices, or null at the end of the epoch.
    #[napi]
    pub fn next_batch(&mut self) -> Option<Vec<i64>> {
        self.inner.next_batch()
    }

    #[napi]
    pub fn close(&mut self) {
        self.inner.close();
    }
}

#[napi(js_name = "NativeTensorIterator")]
pub struct NativeTensorIterator {
    inner: TensorIter,
}

#[napi]
impl NativeTensorIterator {
    /// The next batch, one tensor per dataset name, or null at the end of the epoch.
    #[napi]
    pub fn next_batch(&mut self, env: Env) -> Result<Option<Vec<Tensor>>> {
        guarded("DataLoader", || {
            Ok(self.inner.next_batch()?.map(|batch| wrap_all(&env, batch)))
        })
    }

    /// Stops and joins the prefetch thread. Idempotent.
    #[napi]
    pub fn close(&mut self) {
        self.inner.close();
    }
}
