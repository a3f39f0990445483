// Training on one process through the Accelerator: gradient accumulation,
// exact resume from saveState in a new process, and sharded model saving.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Accelerator, data, manualSeed, nn, optim, randint, randn } from "../ts/index.js";
import { loadWeights } from "../ts/checkpoint.js";

function trainedParameters(batchSize: number, accumulation: number): Float32Array[] {
  manualSeed(0);
  const x = randn([64, 5]);
  const y = randint(0, 3, [64]);
  const model = new nn.Sequential(new nn.Linear(5, 12), new nn.ReLU(), new nn.Linear(12, 3));
  const acc = new Accelerator({ cpu: true, gradientAccumulationSteps: accumulation });
  const [m, opt, loader] = acc.prepare(
    model,
    new optim.AdamW(model.parameters(), { lr: 0.05 }),
    new data.DataLoader(new data.TensorDataset({ x, y }), { batchSize, shuffle: true, seed: 1 }),
  );
  for (const batch of loader) {
    acc.accumulate(m, () => {
      acc.backward(nn.functional.crossEntropy(m.forward(batch.x), batch.y));
      opt.step();
      opt.zeroGrad();
    });
  }
  return m.parameters().map((p) => p.toTypedArray() as Float32Array);
}

test("gradientAccumulationSteps 4 with batch 8 gives the parameters of batch 32", (t) => {
  const accumulated = trainedParameters(8, 4);
  const big = trainedParameters(32, 1);
  const untrained = (() => {
    manualSeed(0);
    randn([64, 5]);
    randint(0, 3, [64]);
    return new nn.Sequential(new nn.Linear(5, 12), new nn.ReLU(), new nn.Linear(12, 3)).parameters().map((p) => p.toTypedArray() as Float32Array);
  })();
  accumulated.forEach((p, i) => {
    const worst = Math.max(...Array.from(p, (v, j) => Math.abs(v - big[i][j])));
    t.true(worst < 1e-6, `parameter ${i} differs by ${worst}`);
    t.true(Array.from(p).some((v, j) => v !== untrained[i][j]), "training changed the parameters");
  });
});

const fixture = fileURLToPath(new URL("fixtures/train/resume.ts", import.meta.url));
const run = (...args: string[]): number[] => {
  const out = spawnSync(process.execPath, ["--import", "@oxc-node/core/register", fixture, ...args], { encoding: "utf8" });
  if (out.status !== 0) throw new Error(out.stderr);
  return JSON.parse(out.stdout.trim().split("\n").pop() ?? "[]");
};

test("saveState, then loadState in a new process, gives the same next 5 losses", (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), "acc-resume-")), "ckpt");
  const uninterrupted = run("full", "20");
  const first = run("save", "15", dir);
  t.deepEqual(first, uninterrupted.slice(0, 15));
  const resumed = run("resume", dir);
  t.deepEqual(resumed, uninterrupted.slice(15, 20));
  t.deepEqual(readdirSync(dir).sort(), [
    "accelerator_state.json", "dl_state_dict.json", "model.safetensors", "optimizer.json",
    "optimizer.safetensors", "random_states_0.safetensors", "scheduler.json",
  ]);
});

test("a model saved in 3 shards loads back equal", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-shards-"));
  const model = new nn.Sequential(new nn.Linear(20, 20), new nn.Linear(20, 20), new nn.Linear(20, 20));
  const acc = new Accelerator({ cpu: true });
  const files = acc.saveModel(model, dir, { maxShardSize: 1700 }); // one layer (1680 bytes) per shard
  t.deepEqual(files.filter((f) => f.endsWith(".safetensors")).length, 3);
  const copy = new nn.Sequential(new nn.Linear(20, 20), new nn.Linear(20, 20), new nn.Linear(20, 20));
  copy.loadStateDict(loadWeights(dir));
  const original = model.stateDict();
  for (const [name, value] of Object.entries(copy.stateDict())) {
    t.deepEqual(value.toArray(), original[name].toArray(), name);
  }
});
