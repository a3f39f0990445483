//! Gathers the next batches of a TensorDataset on a background thread (and starts
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

/// Finished batches waiting in the channel; the thread may hold one more,
/// blocked on sending it, so at most two batches are prepared ahead.
const QUEUE_DEPTH: usize = 1;

type Batch = Result<Vec<Tensor>>;
/// A batch as the thread sends it: a GPU copy may still be running on a side stream.
type Prepared = Result<(Vec<Tensor>, Option<PendingCopy>)>;

pub struct Prefetcher {
    receiver: Option<Receiver<Prepared>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Prefetcher {
    /// Starts a thread that gathers `batches` (lists of row indices) from `dataset` in order.
    pub fn spawn(
        op: &str,
        dataset: TensorDataset,
        batches: Vec<Vec<i64>>,
        device: Option<Device>,
    ) -> Result<Prefetcher> {
        let remaining = batches.len();
        let (sender, receiver) = sync_channel(QUEUE_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (stop, thread_op) = (Arc::clone(&stop), op.to_string());
            std::thread::Builder::new()
                .name("accelerate-prefetch".to_string())
                .spawn(move || produce(&thread_op, &dataset, batches, device, &sender, &stop))
                .map_err(|e| Error::io(op, e))?
        };
        Ok(Prefetcher {
            receiver: Some(receiver),
            stop,
            worker: Some(worker),
            remaining,
        })
    }

    /// The next batch, waiting for the thread if it is not ready; `None` after the last one.
    pub fn next(&mut self, op: &str) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        let receiver = self.receiver.as_ref()?;
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
        self.remaining = if batch.is_ok() { self.remaining - 1 } else { 0 };
        Some(batch)
    }

    /// Stops the thread and waits for it; it finishes at most the batch in progress. Idempotent.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a thread blocked on sending.
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            // The thread catches its own panics, so join cannot report one.
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
    fn yields_every_batch_in_order_then_none() {
        let batches = vec![vec![3, 1], vec![0], vec![2, 4]];
        let mut p = Prefetcher::spawn("test", dataset(5), batches.clone(), None).unwrap();
        for expected in batches {
            let got = p.next("test").unwrap().unwrap();
            assert_eq!(Vec::<i64>::try_from(&got[0]).unwrap(), expected);
        }
        assert!(p.next("test").is_none());
    }

    #[test]
    fn closing_early_joins_a_thread_blocked_on_a_full_queue() {
        let batches: Vec<Vec<i64>> = (0..100).map(|i| vec![i % 5]).collect();
        let mut p = Prefetcher::spawn("test", dataset(5), batches, None).unwrap();
        assert!(p.next("test").unwrap().is_ok());
        p.close();
        assert!(p.worker.is_none());
        assert!(p.next("test").is_none());
    }

    #[test]
    fn a_bad_index_becomes_an_error_and_ends_the_epoch() {
        let mut p = Prefetcher::spawn("test", dataset(5), vec![vec![0], vec![9], vec![1]], None).unwrap();
        assert!(p.next("test").unwrap().is_ok());
        assert!(p.next("test").unwrap().is_err());
        assert!(p.next("test").is_none());
    }
}
