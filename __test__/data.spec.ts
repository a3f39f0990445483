// Data loading: TensorDataset batches gathered in Rust, seeded shuffling, epochs,
// dropLast, user datasets and collation, early exit, resuming, skipping,
// end-of-data detection and data-parallel sharding.
import test from "ava";
import { data, tensor, type Tensor } from "../ts/index.js";

const { DataLoader, TensorDataset } = data;

/** 10 samples: x row i is [i, 100 + i], y is 10 * i. */
function numbered(n = 10) {
  const x = tensor(Array.from({ length: n }, (_, i) => [i, 100 + i]), { dtype: "float32" });
  const y = tensor(Array.from({ length: n }, (_, i) => 10 * i));
  return new TensorDataset({ x, y });
}

function ids(batch: { y: Tensor }): number[] {
  return (batch.y.toArray() as number[]).map((v) => v / 10);
}

function epochIds(loader: Iterable<{ y: Tensor }>): number[][] {
  return Array.from(loader, ids);
}

// Shuffled orders computed independently by a Python transcription of the sampler:
//   def permutation(n, seed, epoch):  # SplitMix64 seeded with mix(seed) ^ rotl(mix(epoch ^ GOLDEN), 17)
//       rng = SplitMix64(SplitMix64(seed).next() ^ rotl(SplitMix64(epoch ^ G).next(), 17))
//       order = list(range(n))
//       for i in range(n - 1, 0, -1):  # Fisher-Yates, Lemire's unbiased bounded draw
//           j = rng.below(i + 1); order[i], order[j] = order[j], order[i]
//       return order
//   permutation(10, 42, 0) -> [3, 1, 6, 7, 0, 2, 4, 9, 5, 8]
//   permutation(10, 42, 1) -> [1, 5, 4, 3, 6, 9, 2, 0, 7, 8]
const SEED_42_EPOCH_0 = [3, 1, 6, 7, 0, 2, 4, 9, 5, 8];
const SEED_42_EPOCH_1 = [1, 5, 4, 3, 6, 9, 2, 0, 7, 8];

test("TensorDataset batches are the rows the sampler picked, in its order", (t) => {
  const loader = new DataLoader(numbered(), { batchSize: 4, shuffle: true, seed: 42 });
  const batches = Array.from(loader);
  t.deepEqual(batches.map(ids), [[3, 1, 6, 7], [0, 2, 4, 9], [5, 8]]);
  for (const { x, y } of batches) {
    const rows = x.toArray() as number[][];
    const labels = y.toArray() as number[];
    t.deepEqual(rows, labels.map((v) => [v / 10, 100 + v / 10]));
    t.is(x.dtype, "float32");
    t.is(y.dtype, "int64");
  }
  t.deepEqual(batches.map((b) => b.x.shape), [[4, 2], [4, 2], [2, 2]]);
  t.deepEqual(epochIds(loader).flat(), SEED_42_EPOCH_1);
});

test("a shuffled epoch visits every sample exactly once", (t) => {
  const loader = new DataLoader(numbered(97), { batchSize: 8, shuffle: true, seed: 3 });
  for (let epoch = 0; epoch < 3; epoch++) {
    const seen = epochIds(loader).flat().sort((a, b) => a - b);
    t.deepEqual(seen, Array.from({ length: 97 }, (_, i) => i));
  }
});

test("the order depends only on seed and epoch", (t) => {
  const a = new DataLoader(numbered(), { batchSize: 3, shuffle: true, seed: 42 });
  const b = new DataLoader(numbered(), { batchSize: 5, shuffle: true, seed: 42 });
  t.deepEqual(epochIds(a).flat(), SEED_42_EPOCH_0);
  t.deepEqual(epochIds(b).flat(), SEED_42_EPOCH_0);
  t.is(a.epoch, 1);
  t.deepEqual(epochIds(a).flat(), SEED_42_EPOCH_1);
  a.setEpoch(0);
  t.deepEqual(epochIds(a).flat(), SEED_42_EPOCH_0);
  const other = new DataLoader(numbered(), { batchSize: 3, shuffle: true, seed: 43 });
  t.notDeepEqual(epochIds(other).flat(), SEED_42_EPOCH_0);
  const unshuffled = new DataLoader(numbered(), { batchSize: 3 });
  t.deepEqual(epochIds(unshuffled), [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]);
});

test("dropLast drops the short batch, and length counts batches", (t) => {
  const kept = new DataLoader(numbered(), { batchSize: 3 });
  const dropped = new DataLoader(numbered(), { batchSize: 3, dropLast: true });
  t.is(kept.length, 4);
  t.is(dropped.length, 3);
  t.deepEqual(epochIds(dropped), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]);
  t.is(new DataLoader(numbered(), { batchSize: 5 }).length, 2);
  t.is(new DataLoader(numbered()).length, 10);
  t.is(kept.remainder, 1);
  t.is(dropped.remainder, -1);
  t.is(kept.totalBatchSize, 3);
});

interface Sample {
  features: Tensor;
  label: number;
  weight: number;
  name: string;
  pair: [number, boolean];
}

const userDataset = {
  length: 5,
  get(i: number): Sample {
    return { features: tensor([i, 10 * i], { dtype: "float32" }), label: i % 2, weight: i + 0.5, name: `s${i}`, pair: [i, i > 2] };
  },
};

test("a user Dataset is batched by the default collate, key by key", (t) => {
  const loader = new DataLoader(userDataset, { batchSize: 3 });
  const [first, second] = Array.from(loader);
  t.deepEqual(first.features.toArray(), [[0, 0], [1, 10], [2, 20]]);
  t.is(first.features.dtype, "float32");
  t.deepEqual(first.label.toArray(), [0, 1, 0]);
  t.is(first.label.dtype, "int64");
  t.deepEqual(first.weight.toArray(), [0.5, 1.5, 2.5]);
  t.is(first.weight.dtype, "float32");
  t.deepEqual(first.name, ["s0", "s1", "s2"]);
  t.deepEqual(first.pair[0].toArray(), [0, 1, 2]);
  t.deepEqual(first.pair[1].toArray(), [false, false, false]);
  t.deepEqual(second.features.shape, [2, 2]);
  t.deepEqual(second.pair[1].toArray(), [true, true]);
});

test("a custom collate makes the batch", (t) => {
  const loader = new DataLoader(userDataset, {
    batchSize: 2,
    collate: (samples: Sample[]) => ({ names: samples.map((s) => s.name).join("+"), count: samples.length }),
  });
  t.deepEqual(Array.from(loader), [
    { names: "s0+s1", count: 2 },
    { names: "s2+s3", count: 2 },
    { names: "s4", count: 1 },
  ]);
  const tensorsCollated = new DataLoader(numbered(4), {
    batchSize: 2,
    collate: (samples: { x: Tensor; y: Tensor }[]) => samples.map((s) => s.y.item()),
  });
  t.deepEqual(Array.from(tensorsCollated), [[0, 10], [20, 30]]);
});

test("the default collate names the sample that does not fit", (t) => {
  const ragged = { length: 2, get: (i: number) => (i === 0 ? { a: 1 } : { b: 2 }) };
  t.throws(() => Array.from(new DataLoader(ragged, { batchSize: 2 })), { message: /samples\[1\] has no key "a"/ });
  const mixed = { length: 2, get: (i: number) => ({ a: i === 0 ? 1 : "one" }) };
  t.throws(() => Array.from(new DataLoader(mixed, { batchSize: 2 })), { message: /samples\[1\]\.a is string/ });
});

test("breaking out of a loop stops it; the next loop runs the same epoch again", (t) => {
  for (const shuffle of [false, true]) {
    const loader = new DataLoader(numbered(), { batchSize: 3, shuffle, seed: 42 });
    const firstBatches: number[][] = [];
    for (let round = 0; round < 5; round++) {
      for (const batch of loader) {
        firstBatches.push(ids(batch));
        break;
      }
    }
    t.is(loader.epoch, 0);
    t.true(firstBatches.every((b) => JSON.stringify(b) === JSON.stringify(firstBatches[0])));
    const full = epochIds(loader);
    t.deepEqual(full[0], firstBatches[0]);
    t.deepEqual(full.flat().sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => i));
    t.is(loader.epoch, 1);
  }
  // An exception inside the loop also ends the pass cleanly.
  const loader = new DataLoader(numbered(), { batchSize: 2 });
  t.throws(() => {
    for (const _ of loader) throw new Error("boom");
  }, { message: "boom" });
  t.deepEqual(epochIds(loader)[0], [0, 1]);
});

test("stateDict and loadStateDict resume at the same next batch", (t) => {
  const reference = epochIds(new DataLoader(numbered(), { batchSize: 2, shuffle: true, seed: 42 }));
  const loader = new DataLoader(numbered(), { batchSize: 2, shuffle: true, seed: 42 });
  let seen = 0;
  let saved = loader.stateDict();
  for (const batch of loader) {
    t.deepEqual(ids(batch), reference[seen]);
    seen += 1;
    saved = loader.stateDict();
    if (seen === 2) break;
  }
  t.deepEqual(saved, { epoch: 0, batchesSeen: 2 });

  const resumed = new DataLoader(numbered(), { batchSize: 2, shuffle: true, seed: 42 });
  resumed.loadStateDict(saved);
  t.deepEqual(epochIds(resumed), reference.slice(2));
  t.deepEqual(resumed.stateDict(), { epoch: 1, batchesSeen: 0 });
  t.deepEqual(epochIds(resumed).flat(), SEED_42_EPOCH_1);
  t.throws(() => resumed.loadStateDict({ epoch: 0, batchesSeen: 6 }), { message: /batchesSeen 6/ });
});

test("skipFirstBatches skips batches of the current epoch and shares its epoch counter", (t) => {
  const loader = new DataLoader(numbered(), { batchSize: 3, shuffle: true, seed: 42 });
  const skipping = loader.skipFirstBatches(2);
  t.is(skipping.length, 2);
  t.deepEqual(epochIds(skipping).flat(), SEED_42_EPOCH_0.slice(6));
  t.is(loader.epoch, 1);
  t.deepEqual(epochIds(loader).flat(), SEED_42_EPOCH_1);
  t.is(loader.skipFirstBatches(9).length, 0);
});

test("TensorDataset checks sizes along dim 0 and names the tensors", (t) => {
  const x = tensor([[1, 2], [3, 4], [5, 6]]);
  const y = tensor([1, 2]);
  t.throws(() => new TensorDataset({ x, y }), { message: /TensorDataset: .*"x" has 3, "y" has 2/ });
  t.throws(() => new TensorDataset({ x, s: tensor(1) }), { message: /"s" is a 0-d tensor/ });
  const ds = new TensorDataset({ x, z: tensor([7, 8, 9]) });
  t.is(ds.length, 3);
  t.deepEqual(ds.keys, ["x", "z"]);
  const last = ds.get(-1);
  t.deepEqual(last.x.toArray(), [5, 6]);
  t.is(last.z.item(), 9);
  t.throws(() => ds.get(3), { message: /index 3 is out of range for a dataset of 3 samples/ });
});

test("endOfDataloader is true exactly while the last batch is current", (t) => {
  for (const dataset of [numbered(), userDataset]) {
    const loader = new DataLoader<unknown, unknown>(dataset, { batchSize: 2 });
    const flags: boolean[] = [];
    for (const _ of loader) flags.push(loader.endOfDataloader);
    const expected = Array.from({ length: loader.length }, (_, i) => i === loader.length - 1);
    t.deepEqual(flags, expected);
    const again: boolean[] = [];
    for (const _ of loader) {
      again.push(loader.endOfDataloader);
      if (again.length === 2) break;
    }
    t.deepEqual(again, [false, false]);
  }
});

test("sharding: 22 samples, batch 3, 2 processes, with and without evenBatches", (t) => {
  const ranks = (evenBatches: boolean) =>
    [0, 1].map((processIndex) => {
      const loader = new DataLoader(numbered(22), { batchSize: 3, shard: { numProcesses: 2, processIndex, evenBatches } });
      t.is(loader.totalBatchSize, 6);
      t.is(loader.remainder, 4);
      return { length: loader.length, batches: epochIds(loader) };
    });
  // Accelerate's tests/test_data_loader.py vectors for range(22), batch size 3.
  t.deepEqual(ranks(true), [
    { length: 4, batches: [[0, 1, 2], [6, 7, 8], [12, 13, 14], [18, 19, 20]] },
    { length: 4, batches: [[3, 4, 5], [9, 10, 11], [15, 16, 17], [21, 0, 1]] },
  ]);
  t.deepEqual(ranks(false), [
    { length: 4, batches: [[0, 1, 2], [6, 7, 8], [12, 13, 14], [18, 19, 20]] },
    { length: 4, batches: [[3, 4, 5], [9, 10, 11], [15, 16, 17], [21]] },
  ]);
  const split = new DataLoader(numbered(22), { batchSize: 4, shard: { numProcesses: 2, processIndex: 1, splitBatches: true } });
  t.deepEqual(epochIds(split), [[2, 3], [6, 7], [10, 11], [14, 15], [18, 19], [0, 1]]);
  t.is(split.totalBatchSize, 4);
  t.throws(() => new DataLoader(numbered(), { batchSize: 3, shard: { numProcesses: 2, processIndex: 0, splitBatches: true } }), {
    message: /batch size \(3\) must be a multiple of the number of processes \(2\)/,
  });
});

test("shuffled shards split one global order between processes", (t) => {
  const global = epochIds(new DataLoader(numbered(), { batchSize: 2, shuffle: true, seed: 42 }));
  const rank1 = epochIds(
    new DataLoader(numbered(), { batchSize: 2, shuffle: true, seed: 42, shard: { numProcesses: 2, processIndex: 1 } }),
  );
  // Global batches 1 and 3, then the last round completed from the epoch's start.
  t.deepEqual(rank1, [global[1], global[3], [SEED_42_EPOCH_0[0], SEED_42_EPOCH_0[1]]]);
});

test("device option delivers batches there; bad options throw", (t) => {
  for (const batch of new DataLoader(numbered(4), { batchSize: 2, device: "cpu" })) t.is(batch.x.device, "cpu");
  for (const batch of new DataLoader(userDataset, { batchSize: 2, device: "cpu" })) t.is(batch.features.device, "cpu");
  t.throws(() => new DataLoader(numbered(), { device: "tpu" }), { message: /unknown device "tpu"/ });
  t.throws(() => new DataLoader(numbered(), { batchSize: 0 }), { message: /batchSize must be an integer >= 1, got 0/ });
  t.throws(() => new DataLoader(numbered(), { shard: { numProcesses: 2, processIndex: 2 } }), {
    message: /processIndex 2 is out of range for 2 process/,
  });
});

test("disposeBatches frees each batch when the loop moves on, and break keeps the current one", (t) => {
  const dataset = numbered();
  const seen: Tensor[][] = [];
  const copies: Tensor[] = [];
  for (const { x, y } of new DataLoader(dataset, { batchSize: 4, disposeBatches: true })) {
    t.false(x.isDisposed || y.isDisposed, "the current batch is alive inside the loop");
    seen.push([x, y]);
    copies.push(y.clone());
  }
  t.true(seen.flat().every((tensor) => tensor.isDisposed), "every batch was freed, the last when the loop finished");
  t.deepEqual(copies.map((y) => y.toArray()), [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]], "clones outlive them");
  t.is(dataset.get(9).y.item(), 90, "the dataset itself is untouched");

  let kept: Tensor | undefined;
  for (const { y } of new DataLoader(dataset, { batchSize: 4, disposeBatches: true })) {
    kept = y;
    break;
  }
  t.deepEqual(kept?.toArray(), [0, 10, 20, 30]);

  const samples = { length: 6, get: (i: number) => ({ v: i }) };
  const collated = new DataLoader(samples, { batchSize: 2, disposeBatches: true });
  const batches: Tensor[] = [];
  for (const { v } of collated) batches.push(v as unknown as Tensor);
  t.true(batches.every((v) => v.isDisposed), "default-collated batches are the loader's too");

  const all = Array.from(new DataLoader(dataset, { batchSize: 4 }));
  t.deepEqual(all.map(ids), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], "without the option batches stay alive");
});
