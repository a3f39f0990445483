// amp: the precision policy (autocast around model forwards and explicit blocks, float32
// outputs, dynamic loss scaling for fp16) on the CPU against torch 2.11, and bf16 on cuda:0.
//
// Reference values come from ~/.cache/accelerate-ts/torch-2.11.0/bin/python, with
//   import torch
//   lin = torch.nn.Linear(3, 2)
//   with torch.no_grad():
//       lin.weight.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.4, 0.5, -0.6]]))
//       lin.bias.copy_(torch.tensor([0.01, -0.02]))
//   x = torch.tensor([[1.1, 2.2, 3.3], [0.7, -1.3, 2.9]])
import test from "ava";
import { spawn } from "node:child_process";
import { freePort } from "./helpers/ranks.js";
import { native } from "../ts/native.js";
import { PrecisionPolicy } from "../ts/precision.js";
import { nn, optim, tensor, type Tensor } from "../ts/index.js";

const X = [[1.1, 2.2, 3.3], [0.7, -1.3, 2.9]];

/** A float32 leaf that requires grad (integer literals would make int64). */
function param(values: number[]): Tensor {
  const p = tensor(values, { dtype: "float32" });
  p.requiresGrad = true;
  return p;
}

/** Records the dtype its Linear computes in; returns the Linear's output and its sum. */
class Net extends nn.Module {
  fc = new nn.Linear(3, 2);
  readonly seen: string[] = [];

  constructor(device = "cpu") {
    super();
    this.fc.loadStateDict({
      weight: tensor([[0.1, 0.2, 0.3], [-0.4, 0.5, -0.6]]),
      bias: tensor([0.01, -0.02]),
    });
    this.to(device);
  }

  forward(x: Tensor): { out: Tensor; parts: [Tensor, number] } {
    const out = this.fc.forward(x);
    this.seen.push(out.dtype);
    return { out, parts: [out.sum(), 7] };
  }
}

const float32Matmul = (device = "cpu") => {
  const a = tensor([[1, 2], [3, 4]], { dtype: "float32", device });
  return a.matmul(a).dtype;
};

test("bf16 on the CPU: the wrapped forward computes in bfloat16 and returns float32", (t) => {
  // with torch.autocast("cpu", dtype=torch.bfloat16): h = lin(x)
  // h.dtype == torch.bfloat16; h.float().tolist() == [[1.5546875, -1.34375], [0.6953125, -2.703125]]
  const policy = new PrecisionPolicy("bf16", "cpu");
  const net = new Net();
  policy.wrapModel(net);
  policy.wrapModel(net); // a second wrap changes nothing
  const { out, parts } = net.forward(tensor(X));
  t.deepEqual(net.seen, ["bfloat16"]);
  t.is(out.dtype, "float32");
  t.deepEqual(out.toArray(), [[1.5546875, -1.34375], [0.6953125, -2.703125]]);
  t.is(parts[0].dtype, "float32");
  t.is(parts[1], 7);
  t.false(native.autocastIsEnabled("cpu"));
  t.is(float32Matmul(), "float32");
  const loss = out.matmul(tensor([[1], [1]], { dtype: "float32" })).mean();
  t.is(loss.dtype, "float32");
  t.deepEqual(
    net.parameters().map((p) => p.dtype),
    ["float32", "float32"],
    "master weights stay float32",
  );
});

test("fp16 on the CPU: the Linear runs in float16 under autocast", (t) => {
  // with torch.autocast("cpu", dtype=torch.float16): h = lin(x)
  // h.float().tolist() == [[1.5498046875, -1.3408203125], [0.6904296875, -2.69140625]]
  const policy = new PrecisionPolicy("fp16", "cpu");
  const net = new Net();
  const inner = policy.autocast(() => net.fc.forward(tensor(X)));
  t.is(inner.dtype, "float16");
  t.deepEqual(inner.to("float32").toArray(), [[1.5498046875, -1.3408203125], [0.6904296875, -2.69140625]]);
  t.is(float32Matmul(), "float32");
});

test("autocast nests, restores after a throw, and is the identity for \"no\"", (t) => {
  const policy = new PrecisionPolicy("bf16", "cpu");
  const dtypes = policy.autocast(() => {
    const inner = policy.autocast(() => float32Matmul());
    return [inner, float32Matmul(), String(native.autocastIsEnabled("cpu"))];
  });
  t.deepEqual(dtypes, ["bfloat16", "bfloat16", "true"]);
  t.is(float32Matmul(), "float32");
  t.throws(() => policy.autocast(() => { throw new Error("inside"); }), { message: "inside" });
  t.false(native.autocastIsEnabled("cpu"));
  t.throws(() => policy.autocast(() => Promise.resolve(1)), { message: /^autocast: the function returned a Promise/ });
  t.false(native.autocastIsEnabled("cpu"));

  const plain = new PrecisionPolicy("no", "cpu");
  t.is(plain.autocast(() => float32Matmul()), "float32");
  const net = new Net();
  const forward = net.forward;
  plain.wrapModel(net);
  t.is(net.forward, forward);
  t.throws(() => new PrecisionPolicy("fp4" as "no", "cpu"), { message: /^PrecisionPolicy: mixedPrecision must be "no", "fp16", "bf16", "fp8", got "fp4"/ });
  t.throws(() => new PrecisionPolicy("bf16", "mps"), { message: /covers "cpu" and "cuda\[:N\]" devices, got "mps"/ });
});

/*
 * The scaler example, as torch.amp.GradScaler("cpu", growth_interval=3):
 *   p = torch.nn.Parameter(torch.tensor([1.0, 2.0])); opt = torch.optim.SGD([p], lr=0.1)
 *   for i in range(5):
 *       c = torch.tensor([float("inf"), 1.0]) if i == 0 else p.detach()
 *       s.scale((p * c).sum()).backward(); s.step(opt); s.update(); opt.zero_grad()
 *   scales: 32768, 32768, 32768, 65536, 65536; after step 0: p == [1, 2], state_dict
 *   {'scale': 32768.0, 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 3, '_growth_tracker': 0};
 *   at the end p == [0.6560999751091003, 1.3121999502182007], '_growth_tracker': 1
 */
function scalerRun(policy: PrecisionPolicy, p: Tensor, opt: optim.SGD, c: Tensor): boolean {
  policy.scaleLoss(p.mul(c).sum()).backward();
  const stepped = policy.step([p], () => opt.step());
  opt.zeroGrad();
  return stepped;
}

test("fp16 on the CPU: inf gradients skip the step and halve the scale; clean steps grow it", (t) => {
  const policy = new PrecisionPolicy("fp16", "cpu", { growthInterval: 3 });
  const p = param([1.0, 2.0]);
  const opt = new optim.SGD([p], { lr: 0.1 });
  t.is(policy.scale, 65536);
  t.false(scalerRun(policy, p, opt, tensor([Infinity, 1.0])));
  t.true(policy.stepWasSkipped);
  t.deepEqual(p.toArray(), [1, 2]);
  t.is(policy.scale, 32768);
  const scales = [];
  for (let i = 0; i < 4; i++) {
    t.true(scalerRun(policy, p, opt, p.detach()));
    t.false(policy.stepWasSkipped);
    scales.push(policy.scale);
  }
  t.deepEqual(scales, [32768, 32768, 65536, 65536]);
  const [a, b] = p.toArray() as number[];
  t.true(Math.abs(a - 0.6560999751091003) < 1e-6 && Math.abs(b - 1.3121999502182007) < 1e-6, `${a}, ${b}`);
  t.is(policy.stateDict()?.growthTracker, 1);
});

test("fp16: unscaled gradients equal the true gradients, and unscale is once per step", (t) => {
  const c = tensor([0.1, -0.2, 0.3]);
  const lossOf = (p: Tensor) => p.mul(c).sum().add(p.square().sum().mul(0.5));
  const plain = param([1.0, -2.0, 3.0]);
  lossOf(plain).backward();
  const truth = plain.grad!.toArray() as number[];

  const policy = new PrecisionPolicy("fp16", "cpu");
  const p = param([1.0, -2.0, 3.0]);
  const scaled = policy.scaleLoss(lossOf(p));
  scaled.backward();
  // 65536 is a power of two: scaling and unscaling are exact in float32.
  t.deepEqual(p.grad!.toArray(), truth.map((g) => g * 65536));
  policy.unscale([p]);
  t.deepEqual(p.grad!.toArray(), truth);
  policy.unscale([p]);
  t.deepEqual(p.grad!.toArray(), truth, "a second unscale in the same step does nothing");
  let calls = 0;
  t.true(policy.step([p], () => calls++));
  t.is(calls, 1);
  t.deepEqual(p.grad!.toArray(), truth, "step does not unscale again");
});

test("fp16: the scaler state round-trips through JSON into a new policy", (t) => {
  const policy = new PrecisionPolicy("fp16", "cpu", { growthInterval: 3 });
  const p = param([1.0, 2.0]);
  const opt = new optim.SGD([p], { lr: 0.1 });
  scalerRun(policy, p, opt, tensor([Infinity, 1.0]));
  const state = policy.stateDict();
  t.deepEqual(state, { scale: 32768, growthFactor: 2, backoffFactor: 0.5, growthInterval: 3, growthTracker: 0 });
  const restored = new PrecisionPolicy("fp16", "cpu");
  restored.loadStateDict(JSON.parse(JSON.stringify(state)));
  t.deepEqual(restored.stateDict(), state);
  t.is(restored.scale, 32768);
  for (let i = 0; i < 3; i++) scalerRun(restored, p, opt, p.detach());
  t.is(restored.scale, 65536, "the loaded growthInterval of 3 applies");
  t.throws(() => restored.loadStateDict({ scale: 2 } as never), { message: /^PrecisionPolicy.loadStateDict: expected numbers growthFactor/ });
  t.throws(() => new PrecisionPolicy("fp16", "cpu", { growthFactor: 0.5 }), { message: "GradScaler: growthFactor must be > 1, got 0.5" });
});

test("bf16 and no: no scaling, every step steps, no scaler state", (t) => {
  for (const mode of ["bf16", "no"] as const) {
    const policy = new PrecisionPolicy(mode, "cpu");
    const loss = tensor(3.5);
    t.is(policy.scaleLoss(loss), loss);
    t.is(policy.scale, null);
    let calls = 0;
    t.true(policy.step([], () => calls++));
    t.is(calls, 1);
    t.false(policy.stepWasSkipped);
    t.is(policy.stateDict(), null);
  }
  const disabled = new PrecisionPolicy("fp16", "cpu", { enabled: false });
  const loss = tensor(3.5);
  t.is(disabled.scaleLoss(loss), loss);
  t.is(disabled.scale, null);
});

/** One rank of the 2-process test: only rank 0's gradient holds inf. */
const RANK_SCRIPT = `
import { Accelerator, optim, tensor } from ${JSON.stringify(new URL("../ts/index.js", import.meta.url).href)};
import { PrecisionPolicy } from ${JSON.stringify(new URL("../ts/precision.js", import.meta.url).href)};
const acc = new Accelerator({ cpu: true, timeout: 30 });
const policy = new PrecisionPolicy("fp16", "cpu");
const p = tensor([1, 2], { dtype: "float32" });
p.requiresGrad = true;
const opt = new optim.SGD([p], { lr: 0.1 });
const c = acc.processIndex === 0 ? tensor([Infinity, 1]) : tensor([1, 1], { dtype: "float32" });
policy.scaleLoss(p.mul(c).sum()).backward();
const stepped = policy.step([p], () => opt.step());
console.log(JSON.stringify({ stepped, scale: policy.scale, p: p.toArray() }));
acc.endTraining();
`;

test("fp16 on 2 processes: an inf on one process skips the step on both", async (t) => {
  const port = await freePort();
  const ranks = await Promise.all(
    [0, 1].map(
      (rank) =>
        new Promise<{ code: number | null; out: string }>((resolve) => {
          const env = { ...process.env, RANK: `${rank}`, LOCAL_RANK: `${rank}`, WORLD_SIZE: "2", LOCAL_WORLD_SIZE: "2" };
          const child = spawn(
            process.execPath,
            ["--import", "@oxc-node/core/register", "--input-type=module", "-e", RANK_SCRIPT],
            { env: { ...env, MASTER_ADDR: "127.0.0.1", MASTER_PORT: `${port}`, OMP_NUM_THREADS: "1" } },
          );
          let out = "";
          child.stdout.on("data", (d) => (out += d));
          child.stderr.on("data", (d) => (out += d));
          const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
          child.on("close", (code) => {
            clearTimeout(timer);
            resolve({ code, out });
          });
        }),
    ),
  );
  for (const { code, out } of ranks) {
    t.is(code, 0, out);
    t.deepEqual(JSON.parse(out.trim().split("\n").pop() ?? ""), { stepped: false, scale: 32768, p: [1, 2] });
  }
});

const cuda = native.cudaIsAvailable();
(cuda ? test : test.skip)("bf16 on cuda:0: the wrapped forward computes in bfloat16 and returns float32", (t) => {
  const policy = new PrecisionPolicy("bf16", "cuda:0");
  const net = new Net("cuda:0");
  policy.wrapModel(net);
  const { out } = net.forward(tensor(X, { device: "cuda:0" }));
  t.deepEqual(net.seen, ["bfloat16"]);
  t.is(out.dtype, "float32");
  t.is(out.device, "cuda:0");
  t.is(float32Matmul("cuda:0"), "float32");
  t.false(native.autocastIsEnabled("cuda:0"));
  t.is(policy.autocast(() => float32Matmul()), "float32", "CPU work is not autocast under a cuda policy");
  t.is(policy.autocast(() => float32Matmul("cuda:0")), "bfloat16");
});
