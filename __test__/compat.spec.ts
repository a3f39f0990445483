// Where HF Accelerate / PyTorch users expect a behaviour: gatherObject flattens like
// gather_object, data.Dataset can be extended, nn.utils.padSequence, and a custom
// collate's batches are freed by the step scope (RSS flat over 2 000 steps).
import test from "ava";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Accelerator, data, nn, tensor, type Tensor } from "../ts/index.js";
import { lastJson, runRanks } from "./helpers/ranks.js";

test("gatherObject flattens arrays one level on 2 processes (HF gather_object); other values give one entry per process", async (t) => {
  const ranks = await runRanks("../fixtures/ux/gather-object.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  for (const r of ranks) {
    const out = lastJson(r.stdout);
    t.deepEqual(out.flat, [0, 1]);
    t.deepEqual(out.pairs, [[0, "a"], [0, "b"], [1, "a"], [1, "b"]]);
    t.deepEqual(out.records, [{ rank: 0 }, { rank: 1 }]);
    t.deepEqual(out.fromMain, [1, 2]);
  }
});

test("gatherObject on one process: an array stays as it is", (t) => {
  const accelerator = new Accelerator({ cpu: true });
  t.deepEqual(accelerator.gatherObject([7, 8]), [7, 8]);
  t.deepEqual(accelerator.gatherObject("x"), ["x"]);
});

test("data.Dataset is a class to extend; a DataLoader batches its samples", (t) => {
  class Squares extends data.Dataset<{ x: number; y: number }> {
    get length() {
      return 5;
    }
    get(i: number) {
      return { x: i, y: i * i };
    }
  }
  const ds = new Squares();
  t.true(ds instanceof data.Dataset);
  t.deepEqual([...ds].map((s) => s.y), [0, 1, 4, 9, 16]);
  const batches = [...new data.DataLoader(ds, { batchSize: 2 })].map((b) => (b.y as Tensor).toArray());
  t.deepEqual(batches, [[0, 1], [4, 9], [16]]);
  t.true(new data.TensorDataset({ a: tensor([1, 2]) }) instanceof data.Dataset);
  // The interface: any object with length and get.
  const plain: data.DatasetLike<number> = { length: 2, get: (i) => i };
  t.deepEqual([...new data.DataLoader(plain, { batchSize: 2 })].map((b) => (b as Tensor).toArray()), [[0, 1]]);
});

test("nn.utils.padSequence pads like PyTorch's pad_sequence", (t) => {
  const seqs = [tensor([1, 2, 3]), tensor([4]), tensor([5, 6])];
  t.deepEqual(nn.utils.padSequence(seqs, { batchFirst: true }).toArray(), [[1, 2, 3], [4, 0, 0], [5, 6, 0]]);
  t.deepEqual(nn.utils.padSequence(seqs).toArray(), [[1, 4, 5], [2, 0, 6], [3, 0, 0]]);
  t.deepEqual(nn.utils.padSequence(seqs, { batchFirst: true, paddingValue: -1, paddingSide: "left" }).toArray(), [[1, 2, 3], [-1, -1, 4], [-1, 5, 6]]);
  const features = nn.utils.padSequence([tensor([[1, 1]]), tensor([[2, 2], [3, 3]])], { batchFirst: true });
  t.deepEqual(features.shape, [2, 2, 2]);
  t.is(features.dtype, "int64");
  t.throws(() => nn.utils.padSequence([tensor([[1, 2]]), tensor([[1, 2, 3]])]), {
    message: "padSequence: sequences[1] has shape [1, 3] but sequences[0] has [1, 2]; trailing dimensions must match",
  });
  t.throws(() => nn.utils.padSequence([]), { message: /padSequence: sequences is empty/ });
});

test("a custom collate (Dataset subclass + padSequence) under a prepared loader holds live tensors and RSS flat over 2 000 steps", (t) => {
  const fixture = fileURLToPath(new URL("fixtures/ux/collate-loop.ts", import.meta.url));
  const run = spawnSync(process.execPath, ["--import", "@oxc-node/core/register", fixture, "2000"], {
    env: { ...process.env, OMP_NUM_THREADS: "1" },
    encoding: "utf8",
    timeout: 240_000,
  });
  t.is(run.status, 0, run.stderr);
  const seen = lastJson(run.stdout) as Record<number, { live: number; rss: number }>;
  t.is(seen[2000].live, seen[100].live, "as many live tensors at step 2 000 as at step 100");
  const grown = (seen[2000].rss - seen[100].rss) / 2 ** 20;
  t.true(grown < 20, `RSS grew by ${grown.toFixed(1)} MiB from step 100 to 2 000`);
});
