//! Gathers the next batches of a TensorDataset on background threads (and starts
//! their copy to the GPU there, on a side stream) while the caller works on the current one.

use super::dataset::TensorDataset;
use crate::cuda::PendingCopy;
use crate::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Tensor};

/// Finished batches waiting in each thread's channel; a thread may hold one more,
/// blocked on sending it, so at most two batches a thread are prepared ahead.
const QUEUE_DEPTH: usize = 1;

/// Threads for batches bound for a GPU: on an H200 host one thread made an `mlp` batch
/// (512 rows of 784 floats, pinned, then copied) in about 300 µs, a captured bf16 step's time.
/// Batches for the CPU keep one thread, leaving the cores to the training loop.
pub const GPU_THREADS: usize = 2;

type Batch = Result<Vec<Tensor>>;
/// A batch as a thread sends it: a GPU copy may still be running on a side stream.
type Prepared = Result<(Vec<Tensor>, Option<PendingCopy>)>;

pub struct Prefetcher {
    /// Thread `k` makes batches `k`, `k + threads`, ... into `receivers[k]`.
    receivers: Vec<Receiver<Prepared>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    taken: usize,
    remaining: usize,
}

impl Prefetcher {
    /// Starts `threads` threads (at least one) that gather `batches` (lists of row indices)
    /// from `dataset`, handed out in order.
    pub fn spawn(
        op: &str,
        dataset: TensorDataset,
        batches: Vec<Vec<i64>>,
        device: Option<Device>,
        threads: usize,
    ) -> Result<Prefetcher> {
        let remaining = batches.len();
        let threads = threads.clamp(1, remaining.max(1));
        let mut shares: Vec<Vec<Vec<i64>>> = vec![Vec::new(); threads];
        for (i, indices) in batches.into_iter().enumerate() {
            shares[i % threads].push(indices);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut prefetcher = Prefetcher {
            receivers: Vec::new(),
            stop,
            workers: Vec::new(),
            taken: 0,
            remaining,
        };
        for share in shares {
            let (sender, receiver) = sync_channel(QUEUE_DEPTH);
            let (stop, thread_op, dataset) = (Arc::clone(&prefetcher.stop), op.to_string(), dataset.shallow_clone());
            // On failure, dropping `prefetcher` stops and joins the threads already started.
            let worker = std::thread::Builder::new()
                .name("accelerate-prefetch".to_string())
                .spawn(move || produce(&thread_op, &dataset, share, device, &sender, &stop))
                .map_err(|e| Error::io(op, e))?;
            prefetcher.receivers.push(receiver);
            prefetcher.workers.push(worker);
        }
        Ok(prefetcher)
    }

    /// The next batch, waiting for its thread if it is not ready; `None` after the last one.
    pub fn next(&mut self, op: &str) -> Option<Batch> {
        if self.remaining == 0 || self.receivers.is_empty() {
            return None;
        }
        let receiver = &self.receivers[self.taken % self.receivers.len()];
        let batch = receiver.recv().unwrap_or_else(|_| {
            Err(Error::invalid(
                op,
                "the prefetch thread stopped before the end of the epoch",
            ))
        });
        // The caller's stream waits for the side-stream copy before using the batch.
        let batch = batch.and_then(|(tensors, pending)| match pending {
            Some(copy) => copy.wait(&tensors).map(|_| tensors),
            None => Ok(tensors),
        });
        self.taken += 1;
        self.remaining = if batch.is_ok() { self.remaining - 1 } else { 0 };
        Some(batch)
    }

    /// Stops the threads and waits for them; each finishes at most the batch in progress.
    /// Idempotent.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers wakes threads blocked on sending.
        self.receivers.clear();
        for worker in self.workers.drain(..) {
            // The threads catch their own panics, so join cannot report one.
            let _ = worker.join();
        }
        self.remaining = 0;
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.close();
    }
}

fn produce(
    op: &str,
    dataset: &TensorDataset,
    batches: Vec<Vec<i64>>,
    device: Option<Device>,
    sender: &SyncSender<Prepared>,
    stop: &AtomicBool,
) {
    let _no_grad = tch::no_grad_guard();
    for indices in batches {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let batch =
            catch_unwind(AssertUnwindSafe(|| dataset.gather_async(op, &indices, device))).unwrap_or_else(|_| {
                Err(Error::invalid(
                    op,
                    "internal error (a Rust panic was caught in the prefetch thread)",
                ))
            });
        let failed = batch.is_err();
        if sender.send(batch).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn dataset(len: i64) -> TensorDataset {
        let x = Tensor::arange(len, (Kind::Int64, Device::Cpu));
        TensorDataset::new("test", vec![("x".to_string(), x)]).unwrap()
    }

    #[test]
    fn yields_every_batch_in_order_then_none_with_one_or_more_threads() {
        let batches = vec![vec![3, 1], vec![0], vec![2, 4], vec![4], vec![1, 0, 2]];
        for threads in [1, 2, 3, 9] {
            let mut p = Prefetcher::spawn("test", dataset(5), batches.clone(), None, threads).unwrap();
            for expected in &batches {
                let got = p.next("test").unwrap().unwrap();
                assert_eq!(&Vec::<i64>::try_from(&got[0]).unwrap(), expected, "{threads} threads");
            }
            assert!(p.next("test").is_none());
        }
    }

    #[test]
    fn closing_early_joins_threads_blocked_on_full_queues() {
        for threads in [1, 2] {
            let batches: Vec<Vec<i64>> = (0..100).map(|i| vec![i % 5]).collect();
            let mut p = Prefetcher::spawn("test", dataset(5), batches, None, threads).unwrap();
            assert!(p.next("test").unwrap().is_ok());
            p.close();
            assert!(p.workers.is_empty());
            assert!(p.next("test").is_none());
        }
    }

    #[test]
    fn a_bad_index_becomes_an_error_and_ends_the_epoch() {
        for threads in [1, 2] {
            let batches = vec![vec![0], vec![9], vec![1], vec![2]];
            let mut p = Prefetcher::spawn("test", dataset(5), batches, None, threads).unwrap();
            assert!(p.next("test").unwrap().is_ok());
            assert!(p.next("test").unwrap().is_err());
            assert!(p.next("test").is_none());
        }
    }

    #[test]
    fn no_batches_yield_none_at_once() {
        let mut p = Prefetcher::spawn("test", dataset(5), Vec::new(), None, 2).unwrap();
        assert!(p.next("test").is_none());
    }
}
