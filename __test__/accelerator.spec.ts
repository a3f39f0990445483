// The Accelerator on one process: process facts, splitting work, collectives'
// single-process results, checkpoints of registered objects and RNG, and errors.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Accelerator, arange, data, keep, nn, noGrad, randn, tensor, tidy, type Tensor } from "../ts/index.js";
import { shareOf } from "../ts/state.js";

test("one process: rank facts and device", (t) => {
  const acc = new Accelerator({ cpu: true });
  t.is(acc.numProcesses, 1);
  t.is(acc.processIndex, 0);
  t.is(acc.localProcessIndex, 0);
  t.true(acc.isMainProcess && acc.isLocalMainProcess && acc.isLastProcess);
  t.is(acc.device, "cpu");
  t.is(acc.gradientAccumulationSteps, 1);
  t.true(acc.syncGradients);
});

test("splitBetweenProcesses gives contiguous shares, the first ranks one more", (t) => {
  t.deepEqual(shareOf(3, 2, 0), { start: 0, end: 2 });
  t.deepEqual(shareOf(3, 2, 1), { start: 2, end: 3 });
  t.deepEqual(shareOf(10, 4, 3), { start: 8, end: 10 });
  const acc = new Accelerator({ cpu: true });
  t.deepEqual(acc.splitBetweenProcesses(["A", "B", "C"]), ["A", "B", "C"]);
});

test("collectives on one process return this process's values", (t) => {
  const acc = new Accelerator({ cpu: true });
  const x = tensor([1, 2, 3], { dtype: "float32" });
  t.deepEqual(acc.gather(x).toArray(), [1, 2, 3]);
  t.deepEqual(acc.gatherForMetrics(x).toArray(), [1, 2, 3]);
  t.deepEqual(acc.reduce(x, "sum").toArray(), [1, 2, 3]);
  t.deepEqual(acc.reduce(x, "mean").toArray(), [1, 2, 3]);
  t.deepEqual(acc.padAcrossProcesses(x).toArray(), [1, 2, 3]);
  t.throws(() => acc.reduce(x, "median" as "sum"), { message: /^reduce: reduction must be/ });
  t.is(acc.onMainProcess(() => 5)(), 5);
});

class Counter {
  count = 0;
  weights: Tensor = tensor([0, 0], { dtype: "float32" });
  stateDict() {
    return { count: this.count, weights: this.weights };
  }
  loadStateDict(state: { count: number; weights: Tensor }) {
    this.count = state.count;
    this.weights = state.weights;
  }
}

test("saveState/loadState restore registered objects, the step and the RNG", (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), "acc-state-")), "ckpt");
  const acc = new Accelerator({ cpu: true, seed: 3 });
  const counter = new Counter();
  acc.registerForCheckpointing(counter);
  counter.count = 7;
  counter.weights = tensor([1.5, 2.5], { dtype: "float32" });
  acc.step = 11;
  acc.saveState(dir);
  const expected = randn([4]).toArray();
  counter.count = 0;
  acc.step = 0;
  randn([100]);
  acc.loadState(dir);
  t.is(counter.count, 7);
  t.deepEqual(counter.weights.toArray(), [1.5, 2.5]);
  t.is(acc.step, 11);
  t.deepEqual(randn([4]).toArray(), expected, "the CPU generator continues where it was saved");
});

test("automatic checkpoint naming numbers checkpoints and keeps totalLimit", (t) => {
  const projectDir = mkdtempSync(join(tmpdir(), "acc-proj-"));
  const acc = new Accelerator({ cpu: true, projectDir, automaticCheckpointNaming: true, totalLimit: 2 });
  const paths = [acc.saveState(), acc.saveState(), acc.saveState()];
  t.deepEqual(paths.map((p) => p.split("/").pop()), ["checkpoint_0", "checkpoint_1", "checkpoint_2"]);
  t.false(existsSync(paths[0]));
  t.true(existsSync(paths[2]));
  const again = new Accelerator({ cpu: true, projectDir, automaticCheckpointNaming: true });
  again.loadState();
  t.is(again.saveIteration, 3, "loading the latest checkpoint continues its numbering");
});

test("a misspelled or snake_case option is an Error naming it and the likely intended one, never silently ignored", (t) => {
  const options = /the options are: /;
  t.throws(() => new Accelerator({ cpu: true, mixed_precision: "bf16" } as never), { message: /^Accelerator: unknown option "mixed_precision" \(did you mean "mixedPrecision"\?\); the options are: mixedPrecision, / });
  t.throws(() => new Accelerator({ cpu: true, gradientAccumulationStep: 4 } as never), { message: /^Accelerator: unknown option "gradientAccumulationStep" \(did you mean "gradientAccumulationSteps"\?\)/ });
  const dataset = new data.TensorDataset({ x: randn([10, 2]) });
  t.throws(() => new data.DataLoader(dataset, { batch_size: 4, drop_last: true } as never), { message: /^DataLoader: unknown option "batch_size" \(did you mean "batchSize"\?\)/ });
  const [logits, target] = [randn([4, 3]), tensor([0, 1, 2, 0])];
  t.throws(() => nn.functional.crossEntropy(logits, target, { reducton: "sum" } as never), { message: /^crossEntropy: unknown option "reducton" \(did you mean "reduction"\?\)/ });
  t.throws(() => nn.functional.mseLoss(logits, logits, { reduce: "sum" } as never), { message: /^mseLoss: unknown option "reduce"; the options are: reduction$/ });
  t.throws(() => nn.functional.gelu(logits, { approx: "tanh" } as never), { message: /^gelu: unknown option "approx"; the options are: approximate/ });
  t.throws(() => new nn.GELU({ approx: "tanh" } as never), { message: /^GELU: unknown option "approx"/ });
  t.throws(() => new nn.Linear(2, 2, { bais: false } as never), { message: /^Linear: unknown option "bais" \(did you mean "bias"\?\); the options are: bias, dtype, device/ });
  t.throws(() => new nn.LayerNorm(4, { element_wise_affine: false } as never), { message: options });
  t.throws(() => new nn.Embedding(4, 2, { padding_idx: 0 } as never), { message: /^Embedding: unknown option "padding_idx"/ });
  t.throws(() => new nn.CausalSelfAttention(8, 2, { dropOut: 0.1 } as never), { message: /^CausalSelfAttention: unknown option "dropOut" \(did you mean "dropout"\?\)/ });
  t.throws(() => randn([2], { requires_grad: true } as never), { message: /^randn: unknown option "requires_grad"; the options are: dtype, device/ });
  t.throws(() => tensor([1, 2], { dtyp: "float64" } as never), { message: /^tensor: unknown option "dtyp" \(did you mean "dtype"\?\); the options are: dtype, device, shape/ });
  t.notThrows(() => new Accelerator({ cpu: true, mixedPrecision: "no", gradientAccumulationSteps: 1 }));
});

test("null or wrong-type arguments are Errors naming the operation and the argument", (t) => {
  t.throws(() => new Accelerator(null as never), { message: "Accelerator: options must be an object, got null" });
  const acc = new Accelerator({ cpu: true });
  t.throws(() => acc.backward(null as never), { message: "backward: loss must be a Tensor, got null" });
  t.throws(() => acc.saveState(null as never), { message: "saveState: dir must be a directory path (a non-empty string), got null" });
  t.throws(() => acc.loadState(5 as never), { message: "loadState: dir must be a directory path (a non-empty string), got 5" });
  t.throws(() => acc.saveModel(new nn.Linear(2, 2), null as never), { message: "saveModel: dir must be a directory path (a non-empty string), got null" });
  t.throws(() => acc.saveModel(null as never, "out"), { message: "saveModel: model must have stateDict(), got null" });
  t.throws(() => new nn.Linear(4, 2).forward(null as never), { message: "Linear.forward: expected a Tensor, got null" });
  t.throws(() => keep(null as never), { message: "keep: expected a Tensor or an array of Tensors, got null" });
  t.throws(() => keep([randn([1]), 3] as never), { message: "keep: expected a Tensor or an array of Tensors, got 3" });
  t.throws(() => tidy(5 as never), { message: "tidy: expected a function, got 5" });
  t.throws(() => noGrad(5 as never), { message: "noGrad: expected a function, got 5" });
});

test("bad options and inputs throw Errors naming the cause", (t) => {
  t.throws(() => new Accelerator({ gradientAccumulationSteps: 0 }), { message: /^Accelerator: gradientAccumulationSteps must be a positive integer/ });
  t.throws(() => new Accelerator({ mixedPrecision: "fp4" as "no" }), { message: /^Accelerator: mixedPrecision must be "no", "fp16", "bf16", "fp8", got "fp4"/ });
  const acc = new Accelerator({ cpu: true });
  t.throws(() => acc.registerForCheckpointing({}, new Counter(), 3), { message: "registerForCheckpointing: objects at positions 0, 2 lack stateDict() and loadStateDict()" });
  t.throws(() => acc.loadState(join(tmpdir(), "no-such-checkpoint")), { message: /^loadState: .*no-such-checkpoint does not exist/ });
  t.throws(() => acc.saveState(), { message: /^saveState: give a directory/ });
  t.throws(() => acc.loadState(tmpdir()), { message: /^loadState: .* is not a checkpoint written by saveState/ });
});

test("prepared loaders: accumulate syncs every N steps and at the end; gatherForMetrics counts every sample once", (t) => {
  const acc = new Accelerator({ cpu: true, gradientAccumulationSteps: 4 });
  const dataset = new data.TensorDataset({ x: arange(37) });
  const [loader] = acc.prepare(new data.DataLoader(dataset, { batchSize: 4 }));
  const syncs: boolean[] = [];
  const seen: number[] = [];
  for (const batch of loader) {
    acc.accumulate(null, () => syncs.push(acc.syncGradients));
    seen.push(...(acc.gatherForMetrics(batch.x).toArray() as number[]));
  }
  t.deepEqual(syncs, [false, false, false, true, false, false, false, true, false, true]);
  t.deepEqual(seen, Array.from({ length: 37 }, (_, i) => i));
});

test("skipFirstBatches resumes a prepared loader mid-epoch", (t) => {
  const acc = new Accelerator({ cpu: true });
  const [loader] = acc.prepare(new data.DataLoader(new data.TensorDataset({ x: arange(10) }), { batchSize: 2 }));
  const rest = acc.skipFirstBatches(loader, 3);
  // A prepared loader frees each batch when the next is asked for: read it as it comes.
  t.deepEqual(Array.from(rest, (b) => b.x.toArray()), [[6, 7], [8, 9]]);
});

test("a prepared loader frees each batch when the loop moves on, unless stepScope and disposeBatches are false", (t) => {
  const acc = new Accelerator({ cpu: true });
  const dataset = new data.TensorDataset({ x: arange(6) });
  const [freeing, keeping] = acc.prepare(
    new data.DataLoader(dataset, { batchSize: 2 }),
    new data.DataLoader(dataset, { batchSize: 2, stepScope: false, disposeBatches: false }),
  );
  const freed = Array.from(freeing, (b) => b.x);
  t.true(freed.every((x) => x.isDisposed));
  t.deepEqual(Array.from(keeping, (b) => b.x).map((x) => x.toArray()), [[0, 1], [2, 3], [4, 5]]);
});

test("the CUDA allocator defaults to expandable segments unless the user configured it", (t) => {
  const allocatorConf = (env: Record<string, string>) => {
    const { PYTORCH_ALLOC_CONF: _a, PYTORCH_CUDA_ALLOC_CONF: _b, ...rest } = process.env;
    const script = "await import('./ts/index.ts'); console.log(JSON.stringify([process.env.PYTORCH_ALLOC_CONF, process.env.PYTORCH_CUDA_ALLOC_CONF]))";
    const run = spawnSync(process.execPath, ["--import", "@oxc-node/core/register", "--input-type=module", "-e", script], {
      env: { ...rest, ...env },
      encoding: "utf8",
    });
    return JSON.parse(run.stdout.trim().split("\n").pop() ?? "null");
  };
  t.deepEqual(allocatorConf({}), ["expandable_segments:True", null]);
  t.deepEqual(allocatorConf({ PYTORCH_CUDA_ALLOC_CONF: "max_split_size_mb:64" }), [null, "max_split_size_mb:64"]);
  t.deepEqual(allocatorConf({ PYTORCH_ALLOC_CONF: "expandable_segments:False" }), ["expandable_segments:False", null]);
});
