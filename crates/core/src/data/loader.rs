//! A data loader's progress through its epochs: which epoch comes next, how many
//! batches of it were handed out (for resuming mid-epoch), whether the current
//! batch is the last, and the passes (iterations) that hand batches out.

use super::dataset::TensorDataset;
use super::prefetch::Prefetcher;
use super::sampler::SamplerSpec;
use crate::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tch::{Device, Tensor};

const OP: &str = "DataLoader";

/// Where a loader stands: the epoch and how many of its batches were handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderState {
    pub epoch: u64,
    pub batches_seen: usize,
}

#[derive(Default)]
struct Progress {
    epoch: u64,
    batches_seen: usize,
    /// Set by `load_state`: the next pass starts at this batch of the epoch.
    resume_at: Option<usize>,
    end_of_dataloader: bool,
    /// Only the most recently started pass records progress.
    current_pass: u64,
}

/// Sampler settings plus shared progress; clones share the progress, so a
/// loader that skips batches and its original advance the same epoch counter.
#[derive(Clone)]
pub struct Loader {
    dataset_len: usize,
    spec: SamplerSpec,
    /// Where the prefetch thread moves each batch (none: where the dataset is).
    device: Option<Device>,
    progress: Arc<Mutex<Progress>>,
}

/// Each epoch's order and batches are held in memory (16 bytes a sample and 24 a
/// batch); a dataset whose epoch cannot be allocated is refused here rather than
/// aborting the process when the first epoch starts.
fn check_epoch_fits(dataset_len: usize, batch_size: usize) -> Result<()> {
    let batches = dataset_len / batch_size.max(1) + 1;
    let bytes = dataset_len
        .checked_mul(16)
        .and_then(|b| b.checked_add(batches.checked_mul(24)?))
        .filter(|&b| b <= isize::MAX as usize);
    let fits = bytes.is_some_and(|bytes| Vec::<u8>::new().try_reserve_exact(bytes).is_ok());
    if fits {
        return Ok(());
    }
    Err(Error::invalid(
        OP,
        format!(
            "a dataset of {dataset_len} samples needs {} GiB for each epoch's order, which cannot be allocated; use a smaller dataset or shard it",
            (dataset_len as f64 * 16.0 / (1u64 << 30) as f64).ceil()
        ),
    ))
}

impl Loader {
    pub fn new(dataset_len: usize, spec: SamplerSpec, device: Option<Device>) -> Result<Loader> {
        spec.validate(OP)?;
        check_epoch_fits(dataset_len, spec.batch_size)?;
        Ok(Loader {
            dataset_len,
            spec,
            device,
            progress: Arc::default(),
        })
    }

    pub fn device(&self) -> Option<Device> {
        self.device
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        // Progress is plain counters, consistent after any panic; keep using it.
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn spec(&self) -> &SamplerSpec {
        &self.spec
    }

    pub fn dataset_len(&self) -> usize {
        self.dataset_len
    }

    /// Batches this process gets per epoch.
    pub fn len(&self) -> usize {
        self.spec.num_batches(self.dataset_len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn remainder(&self) -> i64 {
        self.spec.remainder(self.dataset_len)
    }

    pub fn state(&self) -> LoaderState {
        let p = self.progress();
        LoaderState {
            epoch: p.epoch,
            batches_seen: p.batches_seen,
        }
    }

    pub fn end_of_dataloader(&self) -> bool {
        self.progress().end_of_dataloader
    }

    /// Makes the next pass run epoch `epoch` from its start. Setting the epoch the
    /// loader is already at keeps a resume point loaded by `load_state`.
    pub fn set_epoch(&self, epoch: u64) {
        let mut p = self.progress();
        if p.epoch != epoch {
            p.epoch = epoch;
            p.batches_seen = 0;
            p.resume_at = None;
        }
    }

    /// Makes the next pass resume `state.epoch` after its first `state.batches_seen` batches.
    pub fn load_state(&self, state: LoaderState) -> Result<()> {
        let len = self.len();
        if state.batches_seen > len {
            return Err(Error::invalid(
                "loadStateDict",
                format!(
                    "batchesSeen {} is more than the {len} batches of an epoch",
                    state.batches_seen
                ),
            ));
        }
        let mut p = self.progress();
        p.epoch = state.epoch;
        p.batches_seen = state.batches_seen;
        p.resume_at = Some(state.batches_seen);
        Ok(())
    }

    /// Starts a pass over the current epoch, skipping its first `skip` batches
    /// (or more, where a loaded state says to resume later); returns it with the
    /// batches it will hand out.
    fn begin(&self, skip: usize) -> (Pass, Vec<Vec<i64>>) {
        let total = self.len();
        let (epoch, start, id) = {
            let mut p = self.progress();
            let start = p.resume_at.take().unwrap_or(0).max(skip).min(total);
            p.current_pass += 1;
            p.batches_seen = start;
            p.end_of_dataloader = false;
            (p.epoch, start, p.current_pass)
        };
        let mut batches = self.spec.epoch_batches(self.dataset_len, epoch);
        batches.drain(..start.min(batches.len()));
        let pass = Pass {
            loader: self.clone(),
            id,
            position: start,
            total,
            finished: false,
        };
        (pass, batches)
    }

    /// A pass that hands out index lists (the caller fetches and collates samples).
    pub fn iter_indices(&self, skip: usize) -> IndexIter {
        let (pass, batches) = self.begin(skip);
        IndexIter {
            pass,
            batches: batches.into_iter(),
        }
    }

    /// A pass that hands out batches gathered from `dataset` (and moved to the
    /// loader's device) by a background thread.
    pub fn iter_tensors(&self, dataset: &TensorDataset, skip: usize) -> Result<TensorIter> {
        if dataset.len() != self.dataset_len {
            return Err(Error::invalid(
                OP,
                format!(
                    "the dataset has {} samples but the loader was made for {}",
                    dataset.len(),
                    self.dataset_len
                ),
            ));
        }
        let (pass, batches) = self.begin(skip);
        let threads = match self.device {
            Some(device) if device.is_cuda() => super::prefetch::GPU_THREADS,
            _ => 1,
        };
        let prefetcher = Prefetcher::spawn(OP, dataset.shallow_clone(), batches, self.device, threads)?;
        Ok(TensorIter { pass, prefetcher })
    }
}

/// One iteration over an epoch: records each batch handed out, and advances
/// the epoch once all were.
struct Pass {
    loader: Loader,
    id: u64,
    position: usize,
    total: usize,
    finished: bool,
}

impl Pass {
    fn handed_out(&mut self) {
        self.position += 1;
        let mut p = self.loader.progress();
        if p.current_pass == self.id {
            p.batches_seen = self.position;
            p.end_of_dataloader = self.position == self.total;
        }
    }

    /// Ends the pass; if every batch was handed out, the next pass runs the next epoch.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let mut p = self.loader.progress();
        if p.current_pass == self.id && self.position == self.total {
            p.epoch += 1;
            p.batches_seen = 0;
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.finish();
    }
}

pub struct IndexIter {
    pass: Pass,
    batches: std::vec::IntoIter<Vec<i64>>,
}

impl IndexIter {
    /// The indices of the next batch, or `None` at the end of the epoch.
    pub fn next_batch(&mut self) -> Option<Vec<i64>> {
        match self.batches.next() {
            Some(batch) => {
                self.pass.handed_out();
                Some(batch)
            }
            None => {
                self.pass.finish();
                None
            }
        }
    }

    /// Ends the pass early (as `break` does). Idempotent.
    pub fn close(&mut self) {
        self.batches = Vec::new().into_iter();
        self.pass.finish();
    }
}

pub struct TensorIter {
    pass: Pass,
    prefetcher: Prefetcher,
}

impl TensorIter {
    /// The next batch (one tensor per dataset name, in order), or `None` at the end of the epoch.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        match self.prefetcher.next(OP) {
            Some(Ok(batch)) => {
                self.pass.handed_out();
                Ok(Some(batch))
            }
            Some(Err(e)) => Err(e),
            None => {
                self.pass.finish();
                Ok(None)
            }
        }
    }

    /// Stops and joins the prefetch thread and ends the pass. Idempotent.
    pub fn close(&mut self) {
        self.prefetcher.close();
        self.pass.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sampler::Shard;

    fn loader(len: usize, batch_size: usize, shuffle: bool) -> Loader {
        Loader::new(
            len,
            SamplerSpec {
                batch_size,
                drop_last: false,
                shuffle,
                seed: 3,
                shard: Shard::default(),
            },
            None,
        )
        .unwrap()
    }

    fn drain(it: &mut IndexIter) -> Vec<Vec<i64>> {
        std::iter::from_fn(|| it.next_batch()).collect()
    }

    #[test]
    fn a_full_pass_advances_the_epoch_and_changes_the_order() {
        let l = loader(10, 3, true);
        let first = drain(&mut l.iter_indices(0));
        assert_eq!(
            l.state(),
            LoaderState {
                epoch: 1,
                batches_seen: 0
            }
        );
        assert!(l.end_of_dataloader());
        let second = drain(&mut l.iter_indices(0));
        assert_ne!(first, second);
        l.set_epoch(0);
        assert_eq!(drain(&mut l.iter_indices(0)), first);
    }

    #[test]
    fn breaking_keeps_the_epoch_and_the_next_pass_restarts_it() {
        let l = loader(10, 3, true);
        let mut it = l.iter_indices(0);
        let first = it.next_batch().unwrap();
        assert!(!l.end_of_dataloader());
        it.close();
        assert_eq!(
            l.state(),
            LoaderState {
                epoch: 0,
                batches_seen: 1
            }
        );
        assert_eq!(l.iter_indices(0).next_batch().unwrap(), first);
    }

    #[test]
    fn load_state_resumes_at_the_next_batch() {
        let l = loader(10, 3, true);
        l.set_epoch(4);
        let all = drain(&mut l.iter_indices(0));
        let resumed = loader(10, 3, true);
        resumed
            .load_state(LoaderState {
                epoch: 4,
                batches_seen: 2,
            })
            .unwrap();
        resumed.set_epoch(4);
        assert_eq!(drain(&mut resumed.iter_indices(0)), all[2..].to_vec());
        assert_eq!(resumed.state().epoch, 5);
        assert!(resumed
            .load_state(LoaderState {
                epoch: 0,
                batches_seen: 5
            })
            .is_err());
    }

    #[test]
    fn an_older_pass_cannot_overwrite_a_newer_one() {
        let l = loader(4, 2, false);
        let mut old = l.iter_indices(0);
        old.next_batch();
        let mut new = l.iter_indices(0);
        old.next_batch();
        old.next_batch();
        assert_eq!(
            l.state(),
            LoaderState {
                epoch: 0,
                batches_seen: 0
            }
        );
        new.next_batch();
        assert_eq!(l.state().batches_seen, 1);
    }

    #[test]
    fn tensor_passes_gather_the_sampled_rows() {
        let l = loader(7, 3, true);
        let x = Tensor::arange(7, (tch::Kind::Int64, Device::Cpu))
            .f_mul_scalar(10)
            .unwrap();
        let ds = TensorDataset::new("t", vec![("x".to_string(), x)]).unwrap();
        let expected = l.spec().epoch_batches(7, 0);
        let mut it = l.iter_tensors(&ds, 0).unwrap();
        for indices in expected {
            let batch = it.next_batch().unwrap().unwrap();
            let tens: Vec<i64> = indices.iter().map(|i| i * 10).collect();
            assert_eq!(Vec::<i64>::try_from(&batch[0]).unwrap(), tens);
        }
        assert!(it.next_batch().unwrap().is_none());
        assert_eq!(l.state().epoch, 1);
    }
}
