// Mixed precision through the Accelerator on the CPU: bf16 autocast inside the
// prepared model only, and fp16 loss scaling that skips overflowing steps.
import test from "ava";
import { Accelerator, manualSeed, nn, optim, randn, tensor, type Tensor } from "../ts/index.js";
import { gradientsOf, interleavedForwards } from "./helpers/interleaved.js";

class Recorder extends nn.Module {
  readonly fc = new nn.Linear(4, 3);
  innerDtype = "";
  forward(x: Tensor): Tensor {
    const h = this.fc.forward(x);
    this.innerDtype = h.dtype;
    return h.relu();
  }
}

test("bf16: matmuls inside the prepared model run in bfloat16; its output and the loss are float32", (t) => {
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const [model] = acc.prepare(new Recorder());
  const x = tensor([[1, 2, 3, 4]], { dtype: "float32" });
  const out = model.forward(x);
  t.is(model.innerDtype, "bfloat16");
  t.is(out.dtype, "float32");
  const loss = out.sub(1).pow(2).mean();
  t.is(loss.dtype, "float32");
  t.is(x.matmul(model.fc.weight.t()).dtype, "float32", "no autocast outside the model");
  t.is(acc.autocast(() => x.matmul(model.fc.weight.t())).dtype, "bfloat16");
  t.true(model.parameters().every((p) => p.dtype === "float32"), "master weights stay float32");
});

test("bf16: a prepared native model (a Sequential, a Linear) returns float32 made in the engine: the values and gradients of converting after it, without a conversion node; a subclass's own forward still runs", (t) => {
  manualSeed(3);
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const count = (prof: { rows: { name: string; count: number }[] }, part: string) =>
    prof.rows.filter((r) => r.name.includes(part)).reduce((sum, r) => sum + r.count, 0);
  const x = randn([5, 6]);
  const builders: [string, () => nn.Module][] = [
    ["Sequential", () => new nn.Sequential(new nn.Linear(6, 8), new nn.ReLU(), new nn.Linear(8, 3))],
    ["Sequential ending in a ReLU", () => new nn.Sequential(new nn.Linear(6, 8), new nn.ReLU(), new nn.Linear(8, 3), new nn.ReLU())],
    ["Sequential with a Dropout", () => new nn.Sequential(new nn.Linear(6, 8), new nn.Dropout(0), new nn.Linear(8, 3))],
    ["Linear", () => new nn.Linear(6, 3)],
  ];
  for (const [label, build] of builders) {
    const [net, reference] = [build(), build()];
    reference.loadStateDict(net.stateDict());
    const [model] = acc.prepare(net);
    let y: Tensor | undefined;
    const prof = acc.profile(() => {
      y = model.forward(x) as Tensor;
      y.sum().backward();
    });
    const want = acc.autocast(() => reference.forward(x) as Tensor);
    t.is(want.dtype, "bfloat16", label);
    want.to("float32").sum().backward();
    t.is(y!.dtype, "float32", label);
    t.deepEqual(y!.toArray(), want.to("float32").toArray(), label);
    net.parameters().forEach((p, i) => t.deepEqual(p.grad!.toArray(), reference.parameters()[i].grad!.toArray(), `${label}: gradient ${i}`));
    // A chain of Linear and ReLU layers converts inside its one node; other layers after their last.
    const chain = label.startsWith("Sequential") && !label.includes("Dropout");
    t.is(count(prof, "ToCopyBackward0") > 0, !chain, `${label}: a conversion node`);
  }
  // A subclass's forward is the user's: it runs, and its output is converted after it.
  class Doubled extends nn.Sequential {
    forward(x: Tensor): Tensor {
      return super.forward(x).mul(2);
    }
  }
  const [doubled] = acc.prepare(new Doubled(new nn.Linear(6, 3)));
  const out = doubled.forward(x);
  t.is(out.dtype, "float32");
  const inner = acc.autocast(() => nn.Sequential.prototype.forward.call(doubled, x)).to("float32");
  t.deepEqual(out.toArray(), inner.mul(2).toArray());
});

test("bf16: a Sequential chain writes its conversions into the same buffers from call to call, but never into those a graph still holds: two forwards with the weights changed between them, each run backward after both, give each forward's own output and gradients; an input that is not dense trains as its copy", (t) => {
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const build = () => new nn.Sequential(new nn.Linear(6, 16), new nn.ReLU(), new nn.Linear(16, 16), new nn.ReLU(), new nn.Linear(16, 3));
  const [net, alone] = [build(), build()];
  const run = interleavedForwards(acc, net, alone, randn([5, 6]), randn([5, 6]));
  [0, 1].forEach((k) => {
    t.deepEqual(run.outputs[k].toArray(), run.wantOutputs[k].toArray(), `forward ${k + 1}: output`);
    run.gradients[k].forEach((g, i) => t.deepEqual(g.toArray(), run.wantGradients[k][i].toArray(), `forward ${k + 1}: gradient ${i}`));
  });
  // Later steps, with a new batch size each time, still match a fresh chain.
  for (const rows of [5, 7, 5]) {
    const x = randn([rows, 6]);
    const got = gradientsOf(net, acc.autocast(() => net.forward(x)));
    alone.loadStateDict(net.stateDict());
    const want = gradientsOf(alone, acc.autocast(() => alone.forward(x)));
    got.forEach((g, i) => t.deepEqual(g.toArray(), want[i].toArray(), `${rows} rows: gradient ${i}`));
  }
  // An input that is not dense (every other row of a larger batch) trains as its copy does.
  const sparse = randn([10, 6]).slice(0, 0, 10, 2);
  const got = gradientsOf(net, acc.autocast(() => net.forward(sparse)));
  const want = gradientsOf(net, acc.autocast(() => net.forward(sparse.contiguous())));
  got.forEach((g, i) => t.deepEqual(g.toArray(), want[i].toArray(), `every other row: gradient ${i}`));
});

test("fp16: an inf gradient skips the step and halves the scale; clean steps double it after growthInterval", (t) => {
  const acc = new Accelerator({ cpu: true, mixedPrecision: "fp16", gradScaler: { growthInterval: 3 } });
  const net = new nn.Linear(2, 1);
  const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
  // Small inputs keep the scaled fp16 gradients (input × scale) below fp16's maximum, 65504.
  const x = tensor([[0.25, 0.5]], { dtype: "float32" });
  const before = model.weight.toArray();
  t.is(acc.precision.scale, 65536);
  acc.backward(model.forward(x).sum().mul(Infinity));
  opt.step();
  opt.zeroGrad();
  t.true(acc.optimizerStepWasSkipped);
  t.deepEqual(model.weight.toArray(), before, "parameters unchanged by the skipped step");
  t.is(acc.precision.scale, 32768);
  for (let i = 0; i < 3; i++) {
    acc.backward(model.forward(x).sum());
    opt.step();
    opt.zeroGrad();
    t.false(acc.optimizerStepWasSkipped);
  }
  t.is(acc.precision.scale, 65536);
  t.notDeepEqual(model.weight.toArray(), before);
});

test("fp16: clipGradNorm unscales first, so it measures the true gradient norm", (t) => {
  const acc = new Accelerator({ cpu: true, mixedPrecision: "fp16", gradScaler: { initScale: 1024 } });
  const net = new nn.Linear(2, 1, { bias: false });
  const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
  acc.backward(model.forward(tensor([[3, 4]], { dtype: "float32" })).sum()); // d/dw = [3, 4], norm 5
  const norm = acc.clipGradNorm(model.parameters(), 1);
  t.true(Math.abs(norm - 5) < 1e-3, `norm ${norm}`);
  opt.step();
  t.false(acc.optimizerStepWasSkipped);
});

class TwoPart extends nn.Module {
  readonly enc = new nn.Linear(4, 4);
  readonly head = new nn.Linear(4, 2);
  forward(x: Tensor): Tensor {
    return this.head.forward(this.enc.forward(x).relu());
  }
}

test("fp16: clipping all parameters while the optimizer holds some unscales each gradient once", (t) => {
  const train = (clip: boolean): number[] => {
    const acc = new Accelerator({ cpu: true, mixedPrecision: "fp16", seed: 3 });
    const net = new TwoPart();
    const [model, opt] = acc.prepare(net, new optim.SGD(net.head.parameters(), { lr: 0.1 }));
    const x = tensor([[1, 2, 3, 4], [0, -1, 2, 1]], { dtype: "float32" });
    for (let step = 0; step < 3; step++) {
      acc.backward(model.forward(x).square().mean());
      if (clip) acc.clipGradNorm(model.parameters(), 1e9);
      opt.step();
      model.zeroGrad(); // the encoder's gradients too: no optimizer clears them
    }
    return Array.from(net.head.weight.toTypedArray() as Float32Array);
  };
  t.deepEqual(train(true), train(false), "a clip that does not bind changes nothing");
});
