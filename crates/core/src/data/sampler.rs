//! Which dataset indices each batch of an epoch holds, on each process: the
//! (seeded) order, cut into batches, then sharded between data-parallel
//! processes with Hugging Face Accelerate's `BatchSamplerShard` semantics.
//! Pure index arithmetic; no tensors.

use super::rng;
use crate::{Error, Result};

/// How the global batches are divided between data-parallel processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub num_processes: usize,
    pub process_index: usize,
    /// Split every global batch into `num_processes` contiguous pieces instead
    /// of dealing whole batches round-robin.
    pub split_batches: bool,
    /// Complete the last round by cycling indices from the start of the epoch,
    /// so every process gets the same number of full batches.
    pub even_batches: bool,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            num_processes: 1,
            process_index: 0,
            split_batches: false,
            even_batches: true,
        }
    }
}

/// Everything that decides the batches of an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerSpec {
    pub batch_size: usize,
    pub drop_last: bool,
    pub shuffle: bool,
    pub seed: u64,
    pub shard: Shard,
}

impl SamplerSpec {
    pub fn validate(&self, op: &str) -> Result<()> {
        let Shard {
            num_processes,
            process_index,
            split_batches,
            ..
        } = self.shard;
        if self.batch_size == 0 {
            return Err(Error::invalid(op, "batchSize must be at least 1"));
        }
        if num_processes == 0 {
            return Err(Error::invalid(op, "numProcesses must be at least 1"));
        }
        if process_index >= num_processes {
            return Err(Error::invalid(
                op,
                format!("processIndex {process_index} is out of range for {num_processes} process(es)"),
            ));
        }
        if split_batches && !self.batch_size.is_multiple_of(num_processes) {
            return Err(Error::invalid(
                op,
                format!(
                    "with splitBatches the batch size ({}) must be a multiple of the number of processes ({num_processes})",
                    self.batch_size
                ),
            ));
        }
        Ok(())
    }

    /// Samples in one optimizer step across all processes.
    pub fn total_batch_size(&self) -> usize {
        if self.shard.split_batches {
            self.batch_size
        } else {
            self.batch_size * self.shard.num_processes
        }
    }

    /// Samples of the last global batch that are real (not padding), as
    /// Accelerate's `remainder`: `len % totalBatchSize`, or -1 with `drop_last`.
    pub fn remainder(&self, dataset_len: usize) -> i64 {
        if self.drop_last {
            -1
        } else {
            (dataset_len % self.total_batch_size()) as i64
        }
    }

    fn is_sharded(&self) -> bool {
        self.shard.num_processes > 1
    }

    /// Batches of the unsharded sampler (PyTorch's `len(BatchSampler)`).
    fn global_batches(&self, dataset_len: usize) -> usize {
        if self.drop_last {
            dataset_len / self.batch_size
        } else {
            dataset_len.div_ceil(self.batch_size)
        }
    }

    /// Batches this process gets in one epoch. Equals `BatchSamplerShard.__len__`,
    /// except that with `split_batches` and not `even_batches` it counts the
    /// final piece only on the processes that really receive one.
    pub fn num_batches(&self, dataset_len: usize) -> usize {
        let global = self.global_batches(dataset_len);
        if !self.is_sharded() {
            return global;
        }
        let Shard {
            num_processes: n,
            process_index: k,
            split_batches,
            even_batches,
        } = self.shard;
        if split_batches {
            let last_len = dataset_len % self.batch_size;
            let piece = self.batch_size / n;
            let missing_piece = !self.drop_last && !even_batches && last_len != 0 && last_len <= piece * k;
            return global - usize::from(missing_piece);
        }
        let (rounds, rest) = (global / n, global % n);
        if rest == 0 || self.drop_last {
            rounds
        } else if even_batches {
            rounds + 1
        } else {
            rounds + usize::from(k < rest)
        }
    }

    /// The order in which epoch `epoch` visits the dataset, before batching.
    pub fn order(&self, dataset_len: usize, epoch: u64) -> Vec<i64> {
        if self.shuffle {
            rng::permutation(dataset_len, self.seed, epoch)
        } else {
            (0..dataset_len as i64).collect()
        }
    }

    /// This process's batches for epoch `epoch`: every process computes the same
    /// global batches from (seed, epoch) and keeps its shard.
    pub fn epoch_batches(&self, dataset_len: usize, epoch: u64) -> Vec<Vec<i64>> {
        let global = batch_indices(&self.order(dataset_len, epoch), self.batch_size, self.drop_last);
        if self.is_sharded() {
            shard_batches(&global, self.batch_size, self.drop_last, &self.shard)
        } else {
            global
        }
    }
}

/// `order` cut into batches of `batch_size`; the last one is shorter, or dropped with `drop_last`.
pub fn batch_indices(order: &[i64], batch_size: usize, drop_last: bool) -> Vec<Vec<i64>> {
    order
        .chunks(batch_size)
        .filter(|batch| !drop_last || batch.len() == batch_size)
        .map(<[i64]>::to_vec)
        .collect()
}

/// The batches of `shard.process_index` among `batches` (those of every process),
/// following `BatchSamplerShard`. Only the last of `batches` may be short.
pub fn shard_batches(batches: &[Vec<i64>], batch_size: usize, drop_last: bool, shard: &Shard) -> Vec<Vec<i64>> {
    if shard.split_batches {
        split_batches(batches, batch_size, drop_last, shard)
    } else {
        deal_batches(batches, batch_size, drop_last, shard)
    }
}

/// Index `i` of `source` repeated cyclically, as Accelerate pads with the first indices of the epoch.
fn cycled(source: &[i64], i: usize) -> i64 {
    source[i % source.len()]
}

/// Whole batches dealt round-robin: batch `i` goes to process `i % n`; a round is
/// given out only once every process has a full batch in it.
fn deal_batches(batches: &[Vec<i64>], batch_size: usize, drop_last: bool, shard: &Shard) -> Vec<Vec<i64>> {
    let (n, k) = (shard.num_processes, shard.process_index);
    let is_full = |batch: &Vec<i64>| batch.len() == batch_size;
    let mut rounds = batches.len() / n;
    if rounds > 0 && !is_full(&batches[rounds * n - 1]) {
        rounds -= 1;
    }
    let mut mine: Vec<Vec<i64>> = (0..rounds).map(|r| batches[r * n + k].clone()).collect();
    let leftover = &batches[rounds * n..];
    let Some(last) = batches.last() else {
        return mine;
    };
    if drop_last {
        return mine;
    }
    if !shard.even_batches {
        mine.extend(leftover.get(k).cloned());
        return mine;
    }
    mine.extend(leftover.get(k).filter(|batch| is_full(batch)).cloned());
    // Complete the short batch and the rest of the last round with indices
    // taken cyclically from the first round of the epoch.
    let first_round = batches[..n.min(batches.len())].concat();
    let (mut position, mut pending) = if is_full(last) {
        (batches.len(), Vec::new())
    } else {
        (batches.len() - 1, last.clone())
    };
    let mut taken = 0;
    while !position.is_multiple_of(n) || !pending.is_empty() {
        while pending.len() < batch_size {
            pending.push(cycled(&first_round, taken));
            taken += 1;
        }
        let batch = std::mem::take(&mut pending);
        if position % n == k {
            mine.push(batch);
        }
        position += 1;
    }
    mine
}

/// Every batch split into `n` contiguous pieces; process `k` takes piece `k`.
fn split_batches(batches: &[Vec<i64>], batch_size: usize, drop_last: bool, shard: &Shard) -> Vec<Vec<i64>> {
    let piece = batch_size / shard.num_processes;
    let (start, end) = (piece * shard.process_index, piece * (shard.process_index + 1));
    let mut mine: Vec<Vec<i64>> = batches
        .iter()
        .filter(|batch| batch.len() == batch_size)
        .map(|batch| batch[start..end].to_vec())
        .collect();
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return mine;
    };
    if drop_last || last.len() == batch_size {
        return mine;
    }
    if !shard.even_batches {
        if last.len() > start {
            mine.push(last[start..end.min(last.len())].to_vec());
        }
        return mine;
    }
    let padded: Vec<i64> = (start..end)
        .map(|i| last.get(i).copied().unwrap_or_else(|| cycled(first, i - last.len())))
        .collect();
    mine.push(padded);
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch_size: usize, drop_last: bool, shard: Shard) -> SamplerSpec {
        SamplerSpec {
            batch_size,
            drop_last,
            shuffle: false,
            seed: 0,
            shard,
        }
    }

    fn shard(n: usize, k: usize, split_batches: bool, even_batches: bool) -> Shard {
        Shard {
            num_processes: n,
            process_index: k,
            split_batches,
            even_batches,
        }
    }

    /// The batches of both of 2 processes over `0..len`, checking that
    /// `num_batches` agrees with what is produced.
    fn two_ranks(len: usize, batch_size: usize, drop_last: bool, split: bool, even: bool) -> Vec<Vec<Vec<i64>>> {
        (0..2)
            .map(|k| {
                let s = spec(batch_size, drop_last, shard(2, k, split, even));
                let batches = s.epoch_batches(len, 0);
                assert_eq!(s.num_batches(len), batches.len(), "len {len} bs {batch_size} rank {k}");
                batches
            })
            .collect()
    }

    fn v(batches: &[&[i64]]) -> Vec<Vec<i64>> {
        batches.iter().map(|b| b.to_vec()).collect()
    }

    // Vectors from Accelerate's tests/test_data_loader.py (test_batch_sampler_shards_*).

    #[test]
    fn no_split_even() {
        let r0 = v(&[&[0, 1, 2], &[6, 7, 8], &[12, 13, 14], &[18, 19, 20]]);
        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[21, 22, 23]]);
        assert_eq!(two_ranks(24, 3, false, false, true), vec![r0.clone(), r1.clone()]);
        assert_eq!(two_ranks(24, 3, true, false, true), vec![r0.clone(), r1]);

        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[0, 1, 2]]);
        assert_eq!(two_ranks(21, 3, false, false, true), vec![r0.clone(), r1]);

        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[21, 0, 1]]);
        assert_eq!(two_ranks(22, 3, false, false, true), vec![r0, r1]);

        let r0 = v(&[&[0, 1, 2], &[6, 7, 8], &[12, 13, 14], &[18, 19, 0]]);
        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[1, 2, 3]]);
        assert_eq!(two_ranks(20, 3, false, false, true), vec![r0, r1]);

        assert_eq!(
            two_ranks(2, 3, false, false, true),
            vec![v(&[&[0, 1, 0]]), v(&[&[1, 0, 1]])]
        );
    }

    #[test]
    fn no_split_drop_last() {
        let r0 = v(&[&[0, 1, 2], &[6, 7, 8], &[12, 13, 14]]);
        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17]]);
        for len in [20, 21, 22] {
            for even in [true, false] {
                assert_eq!(two_ranks(len, 3, true, false, even), vec![r0.clone(), r1.clone()]);
            }
        }
        for even in [true, false] {
            assert_eq!(two_ranks(2, 3, true, false, even), vec![v(&[]), v(&[])]);
        }
    }

    #[test]
    fn no_split_uneven() {
        let r0 = v(&[&[0, 1, 2], &[6, 7, 8], &[12, 13, 14], &[18, 19, 20]]);
        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[21, 22, 23]]);
        assert_eq!(two_ranks(24, 3, false, false, false), vec![r0.clone(), r1.clone()]);
        assert_eq!(two_ranks(24, 3, true, false, false), vec![r0.clone(), r1]);

        let r1 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17]]);
        assert_eq!(two_ranks(21, 3, false, false, false), vec![r0.clone(), r1.clone()]);

        let r1_22 = v(&[&[3, 4, 5], &[9, 10, 11], &[15, 16, 17], &[21]]);
        assert_eq!(two_ranks(22, 3, false, false, false), vec![r0, r1_22]);

        let r0 = v(&[&[0, 1, 2], &[6, 7, 8], &[12, 13, 14], &[18, 19]]);
        assert_eq!(two_ranks(20, 3, false, false, false), vec![r0, r1]);

        assert_eq!(two_ranks(2, 3, false, false, false), vec![v(&[&[0, 1]]), v(&[])]);
    }

    #[test]
    fn split_even() {
        let r0 = v(&[&[0, 1], &[4, 5], &[8, 9], &[12, 13], &[16, 17], &[20, 21]]);
        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19], &[22, 23]]);
        assert_eq!(two_ranks(24, 4, false, true, true), vec![r0.clone(), r1.clone()]);
        assert_eq!(two_ranks(24, 4, true, true, true), vec![r0.clone(), r1]);

        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19], &[0, 1]]);
        assert_eq!(two_ranks(22, 4, false, true, true), vec![r0, r1]);

        let r0 = v(&[&[0, 1], &[4, 5], &[8, 9], &[12, 13], &[16, 17], &[20, 0]]);
        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19], &[1, 2]]);
        assert_eq!(two_ranks(21, 4, false, true, true), vec![r0, r1]);

        assert_eq!(two_ranks(2, 4, false, true, true), vec![v(&[&[0, 1]]), v(&[&[0, 1]])]);
    }

    #[test]
    fn split_drop_last() {
        let r0 = v(&[&[0, 1], &[4, 5], &[8, 9], &[12, 13], &[16, 17]]);
        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19]]);
        for len in [21, 22] {
            for even in [true, false] {
                assert_eq!(two_ranks(len, 4, true, true, even), vec![r0.clone(), r1.clone()]);
            }
        }
        assert_eq!(two_ranks(2, 4, true, true, true), vec![v(&[]), v(&[])]);
    }

    #[test]
    fn split_uneven() {
        let r0 = v(&[&[0, 1], &[4, 5], &[8, 9], &[12, 13], &[16, 17], &[20, 21]]);
        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19], &[22, 23]]);
        assert_eq!(two_ranks(24, 4, false, true, false), vec![r0.clone(), r1]);

        let r1 = v(&[&[2, 3], &[6, 7], &[10, 11], &[14, 15], &[18, 19]]);
        assert_eq!(two_ranks(22, 4, false, true, false), vec![r0, r1.clone()]);

        let r0 = v(&[&[0, 1], &[4, 5], &[8, 9], &[12, 13], &[16, 17], &[20]]);
        assert_eq!(two_ranks(21, 4, false, true, false), vec![r0, r1]);

        assert_eq!(two_ranks(2, 4, false, true, false), vec![v(&[&[0, 1]]), v(&[])]);
    }

    #[test]
    fn split_needs_a_batch_size_divisible_by_processes() {
        let err = spec(3, false, shard(2, 0, true, true))
            .validate("DataLoader")
            .unwrap_err();
        assert!(err.to_string().contains("batch size (3)"), "{err}");
        assert!(spec(3, false, shard(2, 2, false, true)).validate("DataLoader").is_err());
        assert!(spec(0, false, Shard::default()).validate("DataLoader").is_err());
    }

    /// Batch sizes per process, from Accelerate's test_distributed_data_loop.py.
    fn sizes(len: usize, batch_size: usize, even: bool) -> Vec<Vec<usize>> {
        two_ranks(len, batch_size, false, false, even)
            .iter()
            .map(|rank| rank.iter().map(Vec::len).collect())
            .collect()
    }

    #[test]
    fn distributed_loop_batch_sizes() {
        assert_eq!(sizes(3, 1, true), vec![vec![1, 1], vec![1, 1]]);
        assert_eq!(sizes(3, 1, false), vec![vec![1, 1], vec![1]]);
        assert_eq!(sizes(7, 2, true), vec![vec![2, 2], vec![2, 2]]);
        assert_eq!(sizes(7, 2, false), vec![vec![2, 2], vec![2, 1]]);
    }

    #[test]
    fn twenty_two_samples_batch_three_two_processes() {
        // Even: the last round is completed from the start, so both get 4 batches
        // and 24 index slots cover all 22 samples plus 0 and 1 again.
        let even = two_ranks(22, 3, false, false, true);
        assert_eq!(even[0].len(), 4);
        assert_eq!(even[1].len(), 4);
        assert_eq!(even[1][3], vec![21, 0, 1]);
        let mut seen: Vec<i64> = even.concat().concat();
        seen.sort_unstable();
        let mut expected: Vec<i64> = (0..22).chain([0, 1]).collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);

        // Uneven: no sample repeated, process 1's last batch holds just 21.
        let uneven = two_ranks(22, 3, false, false, false);
        assert_eq!(uneven[1][3], vec![21]);
        let mut seen: Vec<i64> = uneven.concat().concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..22).collect::<Vec<i64>>());
    }

    #[test]
    fn three_processes_complete_the_last_round_from_the_start() {
        // 9 samples, batch 2: global batches [0,1] [2,3] [4,5] [6,7] [8];
        // the second round is [6,7] [8,0] [1,2].
        let all: Vec<Vec<Vec<i64>>> = (0..3)
            .map(|k| spec(2, false, shard(3, k, false, true)).epoch_batches(9, 0))
            .collect();
        assert_eq!(all[0], v(&[&[0, 1], &[6, 7]]));
        assert_eq!(all[1], v(&[&[2, 3], &[8, 0]]));
        assert_eq!(all[2], v(&[&[4, 5], &[1, 2]]));
    }

    #[test]
    fn num_batches_matches_the_batches_everywhere() {
        for len in 0..40 {
            for batch_size in 1..7 {
                for n in 1..5 {
                    for k in 0..n {
                        for flags in 0..8 {
                            let (drop_last, split, even) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                            let s = spec(batch_size, drop_last, shard(n, k, split, even));
                            if s.validate("test").is_err() {
                                continue;
                            }
                            let batches = s.epoch_batches(len, 0);
                            assert_eq!(s.num_batches(len), batches.len(), "{s:?} len {len}");
                            let size = if split && n > 1 { batch_size / n } else { batch_size };
                            if n > 1 && even && !drop_last {
                                assert!(batches.iter().all(|b| b.len() == size), "{s:?} len {len}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_sample_once_per_epoch_across_processes_when_uneven() {
        for len in 1..30 {
            let mut seen: Vec<i64> = (0..3)
                .flat_map(|k| {
                    let mut s = spec(4, false, shard(3, k, false, false));
                    s.shuffle = true;
                    s.seed = 11;
                    s.epoch_batches(len, 2).concat()
                })
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..len as i64).collect::<Vec<i64>>(), "len {len}");
        }
    }

    #[test]
    fn shuffled_processes_share_one_global_order() {
        let global = {
            let mut s = spec(2, false, Shard::default());
            s.shuffle = true;
            s.seed = 5;
            s.epoch_batches(8, 3)
        };
        for k in 0..2 {
            let mut s = spec(2, false, shard(2, k, false, true));
            s.shuffle = true;
            s.seed = 5;
            let mine = s.epoch_batches(8, 3);
            assert_eq!(mine, vec![global[k].clone(), global[k + 2].clone()]);
        }
    }

    #[test]
    fn remainder_and_total_batch_size() {
        let s = spec(3, false, shard(2, 0, false, true));
        assert_eq!(s.total_batch_size(), 6);
        assert_eq!(s.remainder(22), 4);
        assert_eq!(spec(4, false, shard(2, 1, true, true)).remainder(22), 2);
        assert_eq!(spec(3, true, shard(2, 0, false, true)).remainder(22), -1);
        assert_eq!(spec(5, false, Shard::default()).remainder(9), 4);
    }

    #[test]
    fn one_process_keeps_the_short_last_batch() {
        let s = spec(4, false, Shard::default());
        assert_eq!(s.epoch_batches(10, 0), v(&[&[0, 1, 2, 3], &[4, 5, 6, 7], &[8, 9]]));
        assert_eq!(s.num_batches(10), 3);
        let dropped = spec(4, true, Shard::default());
        assert_eq!(dropped.epoch_batches(10, 0).len(), 2);
        assert_eq!(dropped.num_batches(10), 2);
    }
}
