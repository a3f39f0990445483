// accelerator.compileStep on one GPU: a captured step trains exactly like the same step run
// as it is, returns each call's own values, and runs uncaptured (with a message) what it
// cannot replay: another input shape, a step that reads the GPU, changed hyperparameters.
import test from "ava";
import { Accelerator, manualSeed, nn, optim, randint, randn, type MixedPrecision, type Tensor } from "../gpu-imports.js";

interface Run {
  params: number[][];
  losses: number[];
  warnings: string[];
}

/** Trains a small MLP for `batches.length` steps, through compileStep or not. */
function train(
  compiled: boolean,
  precision: MixedPrecision,
  batches: { x: Tensor; y: Tensor }[],
  step: (loss: Tensor) => void = () => {},
  between: (opt: optim.AdamW, i: number) => void = () => {},
): Run {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (message: string) => warnings.push(String(message));
  try {
    manualSeed(0);
    const acc = new Accelerator({ mixedPrecision: precision });
    const net = new nn.Sequential(new nn.Linear(16, 32), new nn.ReLU(), new nn.Linear(32, 4));
    const [model, opt] = acc.prepare(net, new optim.AdamW(net.parameters(), { lr: 1e-2 }));
    const fn = (x: Tensor, y: Tensor): Tensor => {
      const loss = nn.functional.crossEntropy(model.forward(x), y);
      step(loss);
      acc.backward(loss);
      opt.step();
      opt.zeroGrad();
      return loss;
    };
    const run = compiled ? acc.compileStep(fn) : fn;
    const losses: number[] = [];
    const kept: Tensor[] = [];
    batches.forEach(({ x, y }, i) => {
      between(opt as optim.AdamW, i);
      kept.push(run(x.to(undefined, "cuda:0"), y.to(undefined, "cuda:0")));
    });
    // Read only at the end: each call's loss must be its own, not the captured tensor's last value.
    for (const l of kept) losses.push(l.item());
    const params = net.parameters().map((p) => Array.from(p.to("float32", "cpu").toTypedArray() as Float32Array));
    acc.endTraining();
    return { params, losses, warnings };
  } finally {
    console.warn = warn;
  }
}

const batches = (n: number, rows = 8) => {
  manualSeed(1);
  return Array.from({ length: n }, () => ({ x: randn([rows, 16]), y: randint(0, 4, [rows]) }));
};

function same(t: import("ava").ExecutionContext, a: Run, b: Run, tolerance: number): void {
  a.params.forEach((p, i) => p.forEach((v, j) => t.true(Math.abs(v - b.params[i][j]) <= tolerance, `parameter ${i}[${j}]: ${v} vs ${b.params[i][j]}`)));
  a.losses.forEach((l, i) => t.true(Math.abs(l - b.losses[i]) <= tolerance, `loss ${i}: ${l} vs ${b.losses[i]}`));
}

for (const precision of ["no", "bf16"] as const) {
  test(`${precision === "no" ? "fp32" : precision}: a captured step trains exactly like the step run as it is, each call returning its own loss`, (t) => {
    const data = batches(8);
    const eager = train(false, precision, data);
    const captured = train(true, precision, data);
    t.deepEqual(captured.warnings, []);
    t.is(new Set(captured.losses).size, captured.losses.length, "every call has its own loss");
    same(t, eager, captured, precision === "no" ? 1e-6 : 1e-4);
  });
}

test("inputs of another shape run uncaptured, with a message, and train the same", (t) => {
  const data = [...batches(5), ...batches(2, 3), ...batches(2)];
  const eager = train(false, "no", data);
  const captured = train(true, "no", data);
  t.is(captured.warnings.length, 1);
  t.regex(captured.warnings[0], /compileStep: inputs of another shape \(float32\[3,16\].*captured: float32\[8,16\].*\) run uncaptured/);
  same(t, eager, captured, 1e-6);
});

test("a step that reads the GPU cannot be captured: it says why and runs uncaptured", (t) => {
  const data = batches(5);
  const read = (loss: Tensor) => {
    if (Number.isNaN(loss.item())) throw new Error("unreachable");
  };
  const eager = train(false, "no", data, read);
  const captured = train(true, "no", data, read);
  t.is(captured.warnings.length, 1);
  t.regex(captured.warnings[0], /compileStep: capturing the step failed .*may not read values on the host.*; steps run uncaptured from now on/);
  same(t, eager, captured, 1e-6);
});

test("a learning rate changed between calls is applied to the captured step without capturing it again", (t) => {
  const data = batches(8);
  const schedule = (opt: optim.AdamW, i: number) => {
    opt.paramGroups[0].lr = i < 5 ? 1e-2 : 1e-3;
  };
  const eager = train(false, "no", data, undefined, schedule);
  const captured = train(true, "no", data, undefined, schedule);
  t.deepEqual(captured.warnings, []);
  same(t, eager, captured, 1e-6);
});

test("another changed hyperparameter (weight decay) captures the step again, with a message, and is applied", (t) => {
  const data = batches(8);
  const schedule = (opt: optim.AdamW, i: number) => {
    opt.paramGroups[0].weightDecay = i < 5 ? 0.01 : 0.1;
  };
  const eager = train(false, "no", data, undefined, schedule);
  const captured = train(true, "no", data, undefined, schedule);
  t.is(captured.warnings.length, 1);
  t.regex(captured.warnings[0], /something the recorded step holds fixed changed \(hyperparameters other than learning rates.*capturing it again/);
  same(t, eager, captured, 1e-6);
});

test("a state loaded after capture (new storage for the optimizer's moments) captures the step again, with a message", (t) => {
  const data = batches(8);
  const reload = (opt: optim.AdamW, i: number) => {
    if (i === 5) opt.loadStateDict(opt.stateDict());
  };
  const eager = train(false, "no", data, undefined, reload);
  const captured = train(true, "no", data, undefined, reload);
  t.is(captured.warnings.length, 1);
  t.regex(captured.warnings[0], /something the recorded step holds fixed changed .*capturing it again/);
  same(t, eager, captured, 1e-6);
});

test("a parameter that first gets a gradient when the step would be recorded: that call runs uncaptured, the next is recorded", (t) => {
  const run = (compiled: boolean) => {
    const warnings: string[] = [];
    const warn = console.warn;
    console.warn = (message: string) => warnings.push(String(message));
    try {
      manualSeed(0);
      const acc = new Accelerator();
      const a = new nn.Linear(16, 4);
      const b = new nn.Linear(16, 4);
      const net = new nn.ModuleList([a, b]);
      const [, opt] = acc.prepare(net, new optim.AdamW(net.parameters(), { lr: 1e-2 }));
      const fn = (x: Tensor, y: Tensor, both: boolean): Tensor => {
        const logits = both ? a.forward(x).add(b.forward(x)) : a.forward(x);
        const loss = nn.functional.crossEntropy(logits, y);
        acc.backward(loss);
        opt.step();
        opt.zeroGrad();
        return loss;
      };
      const step = compiled ? acc.compileStep(fn) : fn;
      const losses = batches(6).map(({ x, y }, i) => step(x.to(undefined, "cuda:0"), y.to(undefined, "cuda:0"), i >= 2)).map((l) => l.item());
      const params = net.parameters().map((p) => Array.from(p.to("float32", "cpu").toTypedArray() as Float32Array));
      acc.endTraining();
      return { params, losses, warnings };
    } finally {
      console.warn = warn;
    }
  };
  const eager = run(false);
  const captured = run(true);
  t.is(captured.warnings.length, 1);
  t.regex(captured.warnings[0], /optimizer state was still to be created .*that call ran uncaptured/);
  same(t, eager, captured, 1e-6);
});
