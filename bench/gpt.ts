// The `gpt` and `ddp` workloads (shared/bench/WORKLOADS.md): GPT-2-small shape, random
// tokens through the DataLoader, AdamW, bf16 autocast, 30 steps after 5 warm-up.
// One process per GPU; for `ddp` start it with `accelerate launch --num_processes 2`.
//   node --import @oxc-node/core/register bench/gpt.ts [--precision bf16] [--steps 30] [--warmup 5] [--batch 8]
//     [--layers 12 --width 768 --heads 12] [--checkpoint-blocks] [--recompute-gelu] [--fused-norm] [--compile-step] [--profile]   (the `offload` workload: --layers 48 --width 1600 --heads 25 --batch 4,
//     launched with --use_deepspeed --zero_stage 3 --offload_optimizer_device cpu --offload_param_device cpu)
import { parseArgs } from "node:util";
import { Accelerator, data, manualSeed, optim, randint, type MixedPrecision, type Tensor } from "../ts/index.js";
import { Block, GPT, GPT2_SMALL } from "./models/gpt.js";

const { values } = parseArgs({
  options: {
    precision: { type: "string", default: "bf16" },
    "fused-loss": { type: "boolean", default: false },
    "loss-chunk": { type: "string", default: "4096" },
    steps: { type: "string", default: "30" },
    warmup: { type: "string", default: "5" },
    batch: { type: "string", default: "8" },
    layers: { type: "string", default: String(GPT2_SMALL.layers) },
    width: { type: "string", default: String(GPT2_SMALL.width) },
    heads: { type: "string", default: String(GPT2_SMALL.heads) },
    "checkpoint-blocks": { type: "boolean", default: false },
    // The MLP's GELU recomputed in backward (nn.functional.geluLinear) instead of stored.
    "recompute-gelu": { type: "boolean", default: false },
    // Each residual add fused with the LayerNorm after it (nn.functional.addLayerNorm).
    "fused-norm": { type: "boolean", default: false },
    "compile-step": { type: "boolean", default: false },
    // After the timed steps, 3 more under accelerator.profile: a second JSON line with the
    // 30 largest GPU kernels (ms per step), or host operators on the CPU.
    profile: { type: "boolean", default: false },
  },
});
// Checkpointing wraps Block.forward, which returns one tensor; the fused blocks pass two on.
if (values["fused-norm"] && values["checkpoint-blocks"]) throw new Error("gpt: --fused-norm and --checkpoint-blocks do not combine");
const [steps, warmup, batch] = [values.steps, values.warmup, values.batch].map(Number);
const sequence = GPT2_SMALL.context;

const accelerator = new Accelerator({ mixedPrecision: values.precision as MixedPrecision });
manualSeed(0);
const n = batch * accelerator.numProcesses * (steps + warmup);
const tokens = randint(0, GPT2_SMALL.vocab, [n, sequence + 1]);
const dataset = new data.TensorDataset({ x: tokens.slice(1, 0, sequence).contiguous(), y: tokens.slice(1, 1).contiguous() });
const shape = { ...GPT2_SMALL, layers: Number(values.layers), width: Number(values.width), heads: Number(values.heads) };
const net = new GPT(shape, { fusedLoss: values["fused-loss"], lossChunkRows: Number(values["loss-chunk"]), recomputeGelu: values["recompute-gelu"], fusedNorm: values["fused-norm"] });
const params = net.parameters().reduce((sum, p) => sum + p.numel, 0);
const [model, opt, loader] = accelerator.prepare(
  net,
  new optim.AdamW(net.parameters(), { lr: 3e-4, weightDecay: 0.1 }),
  new data.DataLoader(dataset, { batchSize: batch, shuffle: true, dropLast: true }),
);
model.train();
if (values["checkpoint-blocks"]) accelerator.enableActivationCheckpointing(model, Block);
// --compile-step: the whole step captured as a CUDA graph after 2 calls (accelerator.compileStep);
// its host time is counted as forward.
const compiled = values["compile-step"]
  ? accelerator.compileStep((x: Tensor, y: Tensor) => {
      const loss = model.forward(x, y);
      accelerator.backward(loss);
      opt.step();
      opt.zeroGrad();
      return loss;
    })
  : null;
const runStep = (x: Tensor, y: Tensor): Tensor => {
  if (compiled !== null) return compiled(x, y);
  const loss = model.forward(x, y);
  accelerator.backward(loss);
  opt.step();
  opt.zeroGrad();
  return loss;
};
let lastBatch: { x: Tensor; y: Tensor } | null = null;
let started = 0n;
let step = 0;
let lastLoss = 0;
const curve: Tensor[] = [];
// Host time spent in each phase over the timed steps (how much of a step the CPU needs).
const host = { data: 0, forward: 0, backward: 0, step: 0 };
const now = () => Number(process.hrtime.bigint()) / 1e6;
let mark = now();
for (const { x, y } of loader) {
  if (step === warmup) {
    accelerator.synchronize();
    accelerator.resetPeakMemory();
    started = process.hrtime.bigint();
    mark = now();
  }
  const timed = step >= warmup;
  const t0 = now();
  if (timed) host.data += t0 - mark;
  let loss: Tensor;
  let t1: number;
  let t2: number;
  if (compiled === null) {
    loss = model.forward(x, y);
    t1 = now();
    accelerator.backward(loss);
    t2 = now();
    opt.step();
    opt.zeroGrad();
  } else {
    loss = compiled(x, y);
    t1 = t2 = now();
  }
  mark = now();
  if (timed) {
    host.forward += t1 - t0;
    host.backward += t2 - t1;
    host.step += mark - t2;
  }
  curve.push(accelerator.keep(loss.detach())); // read at the end: reading now would wait for the GPU every step
  if (values.profile && step === steps + warmup - 1) lastBatch = { x: accelerator.keep(x), y: accelerator.keep(y) };
  if (step === steps + warmup - 1) lastLoss = accelerator.reduce(loss, "mean").item();
  step += 1;
}
accelerator.synchronize();
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
const memory = accelerator.memory();
const losses = curve.map((l) => Math.round(l.item() * 1e4) / 1e4);
const first = losses[0];
if (accelerator.isMainProcess) {
  console.log(
    JSON.stringify({
      system: "accelerate-ts", workload: "gpt", precision: values.precision, fused_loss: values["fused-loss"] ? Number(values["loss-chunk"]) : false,
      checkpoint_blocks: values["checkpoint-blocks"], recompute_gelu: values["recompute-gelu"], fused_norm: values["fused-norm"], compile_step: values["compile-step"], processes: accelerator.numProcesses, params,
      batch_per_process: batch, steps, seconds: Math.round(seconds * 1e4) / 1e4,
      tokens_per_s_total: Math.round((batch * sequence * steps * accelerator.numProcesses) / seconds),
      step_ms: Math.round((1e6 * seconds) / steps) / 1e3, peak_mem_gib: Math.round((memory.peak / 2 ** 30) * 1e3) / 1e3, reserved_gib: Math.round((memory.reserved / 2 ** 30) * 1e3) / 1e3,
      loss_first: first, loss_last: Math.round(lastLoss * 1e4) / 1e4, device: accelerator.device,
      host_ms_per_step: Object.fromEntries(Object.entries(host).map(([k, v]) => [k, Math.round((v / steps) * 100) / 100])),
      losses,
    }),
  );
}
if (values.profile && lastBatch !== null) {
  // Every process steps (their collectives meet); the main process prints.
  const { x, y } = lastBatch;
  const runs = 3;
  const prof = accelerator.profile(() => {
    for (let i = 0; i < runs; i++) runStep(x, y);
  });
  const device = accelerator.device === "cpu" ? "cpu" : "cuda";
  const rows = prof.rows.filter((r) => r.device === device);
  const total = rows.reduce((sum, r) => sum + r.totalMs, 0);
  if (accelerator.isMainProcess) console.log(
    JSON.stringify({
      // GPU kernels do not nest, so their times add up to the step; host operators nest.
      profile: { device, kernel_ms_per_step: device === "cuda" ? Math.round((total / runs) * 1e3) / 1e3 : null },
      top: rows.slice(0, 30).map((r) => ({ name: r.name.slice(0, 200), calls: r.count / runs, ms: Math.round((r.totalMs / runs) * 1e3) / 1e3 })),
    }),
  );
}
accelerator.endTraining();
