// Issue 14's "Found" list, one test each: untrusted checkpoint files (symlinks out,
// FIFOs, /dev/zero, index entries leaving the directory), staged reads, staging
// cleanup, integer and fill-value checks, aborts turned into errors, named panics.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Accelerator, arange, data, full, nn, ones, optim, randn, tensor, zeros } from "../ts/index.js";
import {
  cleanStaging, loadStateFiles, loadWeights, readCheckpoint, readCheckpointJson, saveStateFiles, saveWeights,
} from "../ts/checkpoint.js";
import { native } from "../ts/native.js";
import { settle } from "./helpers/gc.js";

const scratch = () => mkdtempSync(join(tmpdir(), "acc-harden-"));

/** Runs `fn`, which must throw; returns the message and how long it took. */
function failure(t: { fail(m: string): void }, fn: () => unknown): { message: string; ms: number } {
  const started = Date.now();
  try {
    fn();
  } catch (error) {
    return { message: (error as Error).message, ms: Date.now() - started };
  }
  t.fail("expected an Error");
  return { message: "", ms: 0 };
}

/** A checkpoint-like directory with one state file, and a secret beside it. */
function stateDir(): { root: string; dir: string } {
  const root = scratch();
  const dir = join(root, "ckpt");
  mkdirSync(dir);
  writeFileSync(join(root, "secret.json"), "root:x:0:0:root:/root:/bin/bash\n");
  return { root, dir };
}

test("a state file linked to /dev/zero, a FIFO or a file outside ends in an Error within 2 s, naming it, quoting nothing", (t) => {
  const { root, dir } = stateDir();
  symlinkSync("/dev/zero", join(dir, "dl_state_dict.json"));
  symlinkSync(join(root, "secret.json"), join(dir, "optimizer.json"));
  const mkfifo = spawnSync("mkfifo", [join(dir, "scheduler.json")]);
  if (mkfifo.status !== 0) t.fail(`mkfifo failed: ${mkfifo.stderr}`);
  for (const [name, expected] of [
    ["dl_state_dict", "leaves the checkpoint directory"],
    ["optimizer", "leaves the checkpoint directory"],
    ["scheduler", "is a FIFO"],
  ]) {
    const { message, ms } = failure(t, () => loadStateFiles(join(dir, name)));
    t.true(message.startsWith("loadState: ") && message.includes(`${name}.json`) && message.includes(expected), message);
    t.false(message.includes("root:x"), message);
    t.true(ms < 2000, `${name}: ${ms} ms`);
  }
});

test("a model file linked out of the checkpoint is refused; a JSON error never quotes the file", (t) => {
  const { root, dir } = stateDir();
  const elsewhere = join(root, "elsewhere.safetensors");
  saveWeights({ w: ones([2]) }, root);
  symlinkSync(join(root, "model.safetensors"), join(dir, "model.safetensors"));
  t.regex(failure(t, () => loadWeights(dir)).message, /^loadModel: .*model\.safetensors: is a symbolic link that leaves the checkpoint directory/);
  writeFileSync(join(dir, "bad.json"), "root:x:0:0:root\n");
  const { message } = failure(t, () => readCheckpointJson(dir, "bad.json"));
  t.is(message, `loadState: ${join(dir, "bad.json")} is not valid JSON`);
  t.false(elsewhere.length === 0);
});

test("an index whose entries leave the directory is refused before anything is read", (t) => {
  const root = scratch();
  const outside = join(root, "outside");
  saveWeights({ secret: ones([3]) }, outside);
  const dir = join(root, "model");
  mkdirSync(dir);
  for (const entry of ["../outside/model.safetensors", join(outside, "model.safetensors"), "sub/model.safetensors"]) {
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: { secret: entry } }));
    const { message } = failure(t, () => loadWeights(dir));
    t.true(message.startsWith("loadModel: ") && message.includes("not a plain file name inside the directory"), message);
  }
});

test("a truncated safetensors file names the file", (t) => {
  const dir = scratch();
  saveWeights({ w: randn([64]) }, dir);
  const path = join(dir, "model.safetensors");
  const bytes = Buffer.from(native.readCheckpointFile(dir, "model.safetensors"));
  writeFileSync(path, bytes.subarray(0, bytes.length - 10));
  const { message } = failure(t, () => loadWeights(dir));
  t.true(message.startsWith("loadModel: ") && message.includes(path), message);
});

test.serial("readCheckpoint reads and checks everything first: a bad step or a bad optimizer file fails with nothing applied", async (t) => {
  const dir = scratch();
  const layout = { models: 1, optimizers: 1, schedulers: 0, loaders: 0, customObjects: 0, processIndex: 0 };
  saveWeights({ w: ones([2]) }, dir);
  saveStateFiles(join(dir, "optimizer"), { step: 3, exp: zeros([2]) });
  writeFileSync(join(dir, "accelerator_state.json"), JSON.stringify({ step: "x", saveIteration: 1, customObjects: 0 }));
  t.regex(failure(t, () => readCheckpoint(dir, layout)).message, /^loadState: .*accelerator_state\.json has "step" of type string; it must be a non-negative integer/);
  writeFileSync(join(dir, "accelerator_state.json"), JSON.stringify({ step: 4, saveIteration: 1, customObjects: 0 }));
  const staged = readCheckpoint(dir, layout);
  t.is(staged.meta.step, 4);
  t.deepEqual(staged.models[0].w.toArray(), [1, 1]);
  t.is((staged.optimizers[0] as { step: number }).step, 3);
  staged.dispose();
  writeFileSync(join(dir, "optimizer.json"), "{ not json");
  await settle();
  const before = native.liveTensors();
  t.regex(failure(t, () => readCheckpoint(dir, layout)).message, /^loadState: .*optimizer\.json is not valid JSON$/);
  t.is(native.liveTensors(), before, "the tensors read before the failure are freed");
});

/** A prepared run with two models, AdamW over both, a StepLR and a registered object; `secondOut` sizes the second model. */
function twoModelRun(secondOut: number, custom: { stateDict(): unknown; loadStateDict(state: unknown): void }) {
  const acc = new Accelerator({ cpu: true });
  const first = new nn.Linear(2, 2);
  const second = new nn.Linear(3, secondOut);
  const opt = new optim.AdamW([...first.parameters(), ...second.parameters()], { lr: 0.1 });
  const sched = new optim.lrScheduler.StepLR(opt, { stepSize: 1, gamma: 0.5 });
  acc.registerForCheckpointing(custom);
  const [m1, m2, o, s] = acc.prepare(first, second, opt, sched);
  return { acc, m1, m2, o, s };
}

function trainOnce(run: ReturnType<typeof twoModelRun>) {
  const loss = run.m1.forward(ones([1, 2])).sum().add(run.m2.forward(ones([1, 3])).sum());
  run.acc.backward(loss);
  run.o.step();
  run.s.step();
  run.o.zeroGrad();
}

test.serial("loadState is all-or-nothing across objects: a wrong shape in the second model or a failing later object leaves everything as it was", async (t) => {
  const dir = join(scratch(), "ckpt");
  const saved = twoModelRun(3, { stateDict: () => ({ v: 1 }), loadStateDict: () => {} });
  trainOnce(saved);
  trainOnce(saved);
  saved.acc.saveState(dir);

  // The second model has a different shape: nothing is applied, the first model included.
  const wrong = twoModelRun(4, { stateDict: () => ({ v: 0 }), loadStateDict: () => t.fail("a registered object was loaded") });
  trainOnce(wrong);
  const weights = wrong.m1.weight.toArray();
  const lr = wrong.s.getLastLr();
  const optimizerStep = JSON.stringify(Object.keys(wrong.o.stateDict() as object));
  t.regex(failure(t, () => wrong.acc.loadState(dir)).message, /^loadStateDict: "weight" has shape \[3, 3\] in the checkpoint but \[4, 3\] in the model/);
  t.deepEqual(wrong.m1.weight.toArray(), weights, "the first model is unchanged");
  t.deepEqual(wrong.s.getLastLr(), lr, "the scheduler is unchanged");
  t.is(JSON.stringify(Object.keys(wrong.o.stateDict() as object)), optimizerStep);

  // A registered object that fails after the optimizer and scheduler loaded: both are restored.
  const late = twoModelRun(3, { stateDict: () => ({ v: 0 }), loadStateDict: () => { throw new Error("custom: refused"); } });
  trainOnce(late);
  const before = {
    w1: late.m1.weight.toArray(),
    lr: late.s.getLastLr(),
    expAvg: ((late.o.stateDict() as { state: Record<string, { toArray(): unknown }> }).state["0.exp_avg"]).toArray(),
  };
  await settle();
  const live = native.liveTensors();
  t.is(failure(t, () => late.acc.loadState(dir)).message, "custom: refused");
  t.is(native.liveTensors(), live, "snapshots and staged tensors are freed");
  t.deepEqual(late.m1.weight.toArray(), before.w1, "the models are untouched");
  t.deepEqual(late.s.getLastLr(), before.lr, "the scheduler is restored");
  t.deepEqual(((late.o.stateDict() as { state: Record<string, { toArray(): unknown }> }).state["0.exp_avg"]).toArray(), before.expAvg, "the optimizer is restored");

  // And the same checkpoint loads into a matching run.
  const good = twoModelRun(3, { stateDict: () => ({ v: 0 }), loadStateDict: () => {} });
  good.acc.loadState(dir);
  t.deepEqual(good.m1.weight.toArray(), saved.m1.weight.toArray());
  t.deepEqual(good.s.getLastLr(), saved.s.getLastLr());
});

test("staging left by a killed save is removed by the next save or by cleanStaging; a non-checkpoint path is never replaced", (t) => {
  const root = scratch();
  const target = join(root, "ckpt");
  mkdirSync(join(root, ".ckpt.staging-99999999", "inner"), { recursive: true });
  writeFileSync(join(root, ".ckpt.staging-99999999", "inner", "model.safetensors"), "partial");
  t.deepEqual(cleanStaging(target), [join(root, ".ckpt.staging-99999999")]);
  mkdirSync(join(root, ".ckpt.staging-99999998"));
  const staging = native.stagingDir(target);
  t.deepEqual(readdirSync(root), [staging.slice(root.length + 1)], "the next save's staging is all that is left");
  writeFileSync(join(staging, "accelerator_state.json"), "{}");
  native.commitStagingDir(staging, target);
  const file = join(root, "weights.bin");
  writeFileSync(file, "precious");
  const { message } = failure(t, () => native.stagingDir(file));
  t.true(message.startsWith("saveState: ") && message.includes("is a file, not a checkpoint directory"), message);
});

test("integer arguments refuse NaN, Infinity and fractions, naming operation and argument", (t) => {
  const x = randn([2, 3]);
  const cases: [() => unknown, RegExp][] = [
    [() => zeros([Number.NaN]), /^zeros: shape\[0\] must be an integer ≥ 0, got NaN$/],
    [() => zeros([1.5]), /^zeros: shape\[0\] must be an integer ≥ 0, got 1\.5$/],
    [() => zeros("abc" as never), /^zeros: shape must be an array of integers, got a string$/],
    [() => x.sum(Number.NaN), /^sum: dim must be a safe integer, got NaN$/],
    [() => x.reshape([Number.POSITIVE_INFINITY]), /^reshape: shape\[0\] must be a safe integer, got Infinity$/],
    [() => x.transpose(0, 2 ** 60), /^transpose: dim1 must be a safe integer, got 1152921504606847000$/],
    [() => new nn.Linear(1.5, 3), /^Linear: inFeatures must be an integer ≥ 1, got 1\.5$/],
    [() => x.chunk(0), /^chunk: chunks must be an integer ≥ 1, got 0$/],
  ];
  for (const [fn, expected] of cases) t.regex(failure(t, fn).message, expected);
});

test("tensor() refuses non-numeric data; values a dtype cannot hold are an Error, as in PyTorch", (t) => {
  t.regex(failure(t, () => tensor("abc" as never)).message, /^tensor: data is a string; tensor data holds numbers or booleans$/);
  t.regex(failure(t, () => tensor([1, "2"] as never)).message, /^tensor: data\[1\] is a string/);
  t.regex(failure(t, () => tensor([1, true] as never)).message, /^tensor: data\[1\] mixes numbers and booleans$/);
  t.regex(failure(t, () => full([2], -1, { dtype: "uint8" })).message, /^full: the fill value -1 cannot be converted to uint8 without overflow$/);
  t.regex(failure(t, () => full([2], 1e6, { dtype: "float16" })).message, /^full: the fill value 1000000 cannot be converted to float16/);
  t.regex(failure(t, () => tensor([300], { dtype: "uint8" })).message, /^tensor: the value 300 cannot be converted to uint8 without overflow$/);
  t.deepEqual(full([2], 255, { dtype: "uint8" }).toArray(), [255, 255]);
});

test("a panic is a named Error with libtorch's reason: arange with a step of the wrong sign", (t) => {
  t.is(failure(t, () => arange(0, 10, -1)).message, "arange: step -1 never leads from start 0 to end 10; use a step of the other sign");
});

test("a DataLoader of 2**40 samples is an Error when made, not an abort when iterated", (t) => {
  const { message } = failure(t, () => {
    const loader = new data.DataLoader({ length: 2 ** 40, get: () => randn([1]) }, { batchSize: 2 });
    for (const batch of loader) return batch;
  });
  t.true(message.startsWith("DataLoader: a dataset of 1099511627776 samples needs"), message);
});
