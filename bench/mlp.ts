// The `mlp` workload (shared/bench/WORKLOADS.md): 784 → 2048 → 2048 → 10 with ReLU,
// batch 512, AdamW, data through the library's DataLoader, written as a user would.
// Runs ours, then the PyTorch reference on the same machine and libtorch, in one command.
//   node --import @oxc-node/core/register bench/mlp.ts [--steps 300] [--warmup 30] [--precision no]
//        [--reference bench/torch_mlp.py | .gpu/ref/hf_baseline.py] [--python python3] [--compile-step] [--profile]
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Accelerator, data, libtorch, nn, optim, randint, randn, type MixedPrecision, type Tensor } from "../ts/index.js";

const { values } = parseArgs({
  options: {
    steps: { type: "string", default: "300" },
    warmup: { type: "string", default: "30" },
    batch: { type: "string", default: "512" },
    precision: { type: "string", default: "no" },
    reference: { type: "string", default: "bench/torch_mlp.py" },
    python: { type: "string" },
    "compile-step": { type: "boolean", default: false },
    // After the timed steps, 20 more under accelerator.profile: a second JSON line with the
    // 25 host operators that take longest per step (this step is launch-bound on a GPU).
    profile: { type: "boolean", default: false },
  },
});
const [steps, warmup, batch] = [values.steps, values.warmup, values.batch].map(Number);

const accelerator = new Accelerator({ mixedPrecision: values.precision as MixedPrecision });
const n = batch * accelerator.numProcesses * (steps + warmup);
const dataset = new data.TensorDataset({ x: randn([n, 784]), y: randint(0, 10, [n]) });
const net = new nn.Sequential(new nn.Linear(784, 2048), new nn.ReLU(), new nn.Linear(2048, 2048), new nn.ReLU(), new nn.Linear(2048, 10));
const [model, opt, loader] = accelerator.prepare(
  net,
  new optim.AdamW(net.parameters(), { lr: 3e-4, weightDecay: 0.1 }),
  new data.DataLoader(dataset, { batchSize: batch, shuffle: true, dropLast: true }),
);
let started = 0n;
let step = 0;
let last = 0;
// Host time spent in each phase over the timed steps (the step is launch-bound on a GPU);
// a captured step's time is counted as forward.
const host = { data: 0, forward: 0, backward: 0, step: 0 };
const now = () => Number(process.hrtime.bigint()) / 1e6;
let timed = false;
let mark = now();
const lap = (phase: keyof typeof host) => {
  const t = now();
  if (timed) host[phase] += t - mark;
  mark = t;
};
const train = (x: Tensor, y: Tensor): Tensor => {
  const loss = nn.functional.crossEntropy(model.forward(x), y);
  lap("forward");
  accelerator.backward(loss);
  lap("backward");
  opt.step();
  opt.zeroGrad();
  lap("step");
  return loss;
};
// --compile-step: the same step captured as a CUDA graph after 2 calls (accelerator.compileStep).
const trainStep = values["compile-step"] ? accelerator.compileStep(train) : train;
let lastBatch: { x: Tensor; y: Tensor } | null = null;
for (const { x, y } of loader) {
  if (values.profile && step === steps + warmup - 1) lastBatch = { x: accelerator.keep(x), y: accelerator.keep(y) };
  if (step === warmup) {
    started = process.hrtime.bigint();
    timed = true;
    mark = now();
  }
  lap("data");
  const loss = trainStep(x, y);
  if (values["compile-step"]) lap("forward");
  if (step === steps + warmup - 1) last = loss.item(); // also waits for the GPU
  step += 1;
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
const ours = {
  system: "accelerate-ts", workload: "mlp", precision: values.precision, compile_step: values["compile-step"], device: accelerator.device, steps,
  processes: accelerator.numProcesses,
  samples_per_s: Math.round((batch * accelerator.numProcesses * steps * 10) / seconds) / 10,
  step_ms: Math.round((1e6 * seconds) / steps) / 1e3,
  loss_last: Math.round(last * 1e4) / 1e4,
  host_ms_per_step: Object.fromEntries(Object.entries(host).map(([k, v]) => [k, Math.round((v / steps) * 1000) / 1000])),
};
let profile: unknown = null;
if (values.profile && lastBatch !== null) {
  const { x, y } = lastBatch;
  const runs = 20;
  const prof = accelerator.profile(
    () => {
      for (let i = 0; i < runs; i++) trainStep(x, y);
    },
    { activities: ["cpu"] },
  );
  profile = prof.rows.slice(0, 25).map((r) => ({ name: r.name.slice(0, 120), calls: r.count / runs, us: Math.round((r.totalMs / runs) * 1e4) / 10 }));
}
accelerator.endTraining();
if (!accelerator.isMainProcess) process.exit(0);

function python(): string {
  if (values.python) return values.python;
  const venv = join(libtorch.dir, "..", "..", "..", "..", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}
let reference: unknown = null;
if (existsSync(values.reference)) {
  const args = values.reference.endsWith("hf_baseline.py")
    ? ["--workload", "mlp", "--precision", values.precision, "--steps", String(steps), "--batch", String(batch)]
    : ["--steps", String(steps), "--warmup", String(warmup), "--batch", String(batch)];
  const run = spawnSync(python(), [values.reference, ...args], { encoding: "utf8" });
  reference = run.status === 0 ? JSON.parse(run.stdout.trim().split("\n").pop() ?? "null") : { error: run.stderr.slice(-800) };
}
console.log(JSON.stringify({ ours, reference }));
if (profile !== null) console.log(JSON.stringify({ host_operators_us_per_step: profile }));
