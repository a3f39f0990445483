// Mixed precision through the Accelerator on the CPU: bf16 autocast inside the
// prepared model only, and fp16 loss scaling that skips overflowing steps.
import test from "ava";
import { Accelerator, nn, optim, tensor, type Tensor } from "../ts/index.js";

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
