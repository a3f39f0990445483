// mixedPrecision "fp8" on the CPU (libtorch emulates the fp8 matmuls there): Linear layers
// whose matmul dimensions are multiples of 16 multiply in fp8 e4m3 (forward) and e5m2 (output
// gradient) with per-tensor scales, everything else runs as under "bf16", and training follows bf16.
import test from "ava";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { saveSafetensors } from "../ts/checkpoint.js";
import { Accelerator, manualSeed, nn, optim, randn, zeros, type Tensor } from "../ts/index.js";

/** ‖a - b‖ / ‖b‖. */
const relative = (a: Tensor, b: Tensor) => a.sub(b).pow(2).sum().sqrt().item() / b.pow(2).sum().sqrt().item();

/** A Linear's output and gradients under `mixedPrecision`, from the same weights and input. */
function linearRun(mixedPrecision: "no" | "bf16" | "fp8", rows: number, features: number, out: number) {
  manualSeed(1);
  const layer = new nn.Linear(features, out);
  const x = randn([rows, features]);
  x.requiresGrad = true;
  const acc = new Accelerator({ cpu: true, mixedPrecision });
  const [model] = acc.prepare(layer);
  const y = model.forward(x);
  y.mul(y).mean().backward();
  return { y, x: x.grad as Tensor, w: layer.weight.grad as Tensor, b: layer.bias?.grad as Tensor, dtype: y.dtype };
}

test("fp8: a Linear's output and gradients are within fp8's precision of float32, and differ from bf16's", (t) => {
  const exact = linearRun("no", 64, 32, 48);
  const bf16 = linearRun("bf16", 64, 32, 48);
  const fp8 = linearRun("fp8", 64, 32, 48);
  t.is(fp8.dtype, "float32", "the prepared model returns float32, as under bf16");
  for (const name of ["y", "x", "w", "b"] as const) {
    const error = relative(fp8[name], exact[name]);
    t.true(error < 0.08, `${name}: relative error ${error}`);
    t.true(fp8[name].dtype === exact[name].dtype, `${name} dtype ${fp8[name].dtype}`);
  }
  t.true(relative(fp8.y, bf16.y) > 4 * relative(bf16.y, exact.y), "the forward ran in fp8, not bf16");
  t.true(relative(fp8.w, bf16.w) > 4 * relative(bf16.w, exact.w), "the weight gradient ran in fp8, not bf16");
});

test("fp8: a Linear without a bias (a language model's head) runs in fp8 too", (t) => {
  const run = (mixedPrecision: "no" | "fp8") => {
    manualSeed(2);
    const layer = new nn.Linear(64, 32, { bias: false });
    const acc = new Accelerator({ cpu: true, mixedPrecision });
    const [model] = acc.prepare(layer);
    const x = randn([32, 64]);
    const y = model.forward(x);
    y.square().mean().backward();
    return { y, w: layer.weight.grad as Tensor };
  };
  const exact = run("no");
  const fp8 = run("fp8");
  t.true(relative(fp8.y, exact.y) < 0.08 && relative(fp8.y, exact.y) > 1e-3, `output error ${relative(fp8.y, exact.y)}`);
  t.true(relative(fp8.w, exact.w) < 0.08, `weight gradient error ${relative(fp8.w, exact.w)}`);
});

test("fp8: a 3-d input and a gradient that arrives transposed", (t) => {
  const run = (mixedPrecision: "no" | "fp8") => {
    manualSeed(4);
    const layer = new nn.Linear(32, 48);
    const acc = new Accelerator({ cpu: true, mixedPrecision });
    const [model] = acc.prepare(layer);
    const x = randn([2, 8, 32]);
    x.requiresGrad = true;
    const y = model.forward(x);
    const flat = model.forward(x.reshape([16, 32]));
    // The second loss reads a 2-d output transposed, so its gradient reaches the layer column-major.
    y.square().sum().add(flat.t().contiguous().mul(randn([48, 16])).sum()).backward();
    return { y, x: x.grad as Tensor, w: layer.weight.grad as Tensor };
  };
  const [exact, fp8] = [run("no"), run("fp8")];
  t.deepEqual(fp8.y.shape, [2, 8, 48]);
  for (const name of ["y", "x", "w"] as const) t.true(relative(fp8[name], exact[name]) < 0.08, `${name}: ${relative(fp8[name], exact[name])}`);
});

test("fp8: shapes whose matmul dimensions are not multiples of 16 run exactly as under bf16", (t) => {
  const bf16 = linearRun("bf16", 10, 32, 48);
  const fp8 = linearRun("fp8", 10, 32, 48);
  for (const name of ["y", "x", "w", "b"] as const) t.is(fp8[name].sub(bf16[name]).abs().max().item(), 0, name);
});

test("fp8: an MLP trains like bf16 (losses within 2 % over 30 steps)", (t) => {
  const losses = (mixedPrecision: "bf16" | "fp8") => {
    manualSeed(0);
    const net = new nn.Sequential(new nn.Linear(64, 128), new nn.GELU(), new nn.Linear(128, 64), new nn.GELU(), new nn.Linear(64, 16));
    const acc = new Accelerator({ cpu: true, mixedPrecision });
    const [model, opt] = acc.prepare(net, new optim.AdamW(net.parameters(), { lr: 1e-3 }));
    const x = randn([256, 64]);
    const target = randn([256, 16]);
    const out: number[] = [];
    for (let step = 0; step < 30; step++) {
      const loss = model.forward(x).sub(target).pow(2).mean();
      acc.backward(loss);
      opt.step();
      opt.zeroGrad();
      out.push(loss.item());
    }
    return out;
  };
  const [bf16, fp8] = [losses("bf16"), losses("fp8")];
  t.true(fp8[29] < 0.9 * fp8[0], `fp8 loss went ${fp8[0]} -> ${fp8[29]}`);
  t.true(fp8.some((l, i) => Math.abs(l - bf16[i]) > 1e-4 * bf16[i]), "the layers inside Sequential ran in fp8");
  fp8.forEach((l, i) => t.true(Math.abs(l - bf16[i]) < 0.02 * bf16[i], `step ${i}: fp8 ${l} vs bf16 ${bf16[i]}`));
});

test("fp8: delayed scaling, the input's scale comes from the largest amax of its last 16 calls, and larger values saturate", (t) => {
  manualSeed(5);
  const layer = new nn.Linear(32, 48);
  const acc = new Accelerator({ cpu: true, mixedPrecision: "fp8" });
  const [model] = acc.prepare(layer);
  const x = randn([16, 32]);
  const exact = x.matmul(layer.weight.t()).add(layer.bias as Tensor);
  const first = model.forward(x); // no history yet: scaled by its own amax
  t.true(relative(first, exact) < 0.08, `first call: ${relative(first, exact)}`);
  // A call 16 384x larger puts its amax in the history: the next 16 calls scale by it, which
  // leaves their values in fp8's subnormal range, coarser (a power of two costs nothing else).
  model.forward(x.mul(16384));
  for (let call = 1; call <= 16; call++) {
    const y = model.forward(x);
    t.true(relative(y, first) > 0.01, `call ${call} after the large one still scales by its amax: ${relative(y, first)}`);
  }
  t.is(model.forward(x).sub(first).abs().max().item(), 0, "17 calls later the large amax has left the history");
  // A new layer whose first call is 64x smaller: most of its second call's values saturate at
  // fp8's largest value (the history's largest amax is the smaller call's).
  const [fresh] = new Accelerator({ cpu: true, mixedPrecision: "fp8" }).prepare(new nn.Linear(32, 48));
  (fresh as nn.Module).loadStateDict(layer.stateDict());
  fresh.forward(x.mul(1 / 64));
  const saturated = fresh.forward(x);
  t.true(relative(saturated, exact) > 0.1, `saturated: ${relative(saturated, exact)}`);
  t.true(Number.isFinite(saturated.abs().max().item()), "saturated values stay finite");
});

test("fp8: geluLinear runs as gelu then an fp8 linear, with the same result and gradients", (t) => {
  const run = (mixedPrecision: "no" | "bf16" | "fp8", fn: (h: Tensor, w: Tensor, b: Tensor) => Tensor) => {
    manualSeed(7);
    const [h, w, b] = [randn([32, 64]), randn([48, 64]).mul(0.1), randn([48])];
    for (const p of [h, w, b]) p.requiresGrad = true;
    const acc = new Accelerator({ cpu: true, mixedPrecision });
    const y = acc.autocast(() => fn(h, w, b)).to("float32");
    y.square().mean().backward();
    return { y, h: h.grad as Tensor, w: w.grad as Tensor, b: b.grad as Tensor };
  };
  const separately = (h: Tensor, w: Tensor, b: Tensor) => nn.functional.linear(nn.functional.gelu(h), w, b);
  const fused = run("fp8", (h, w, b) => nn.functional.geluLinear(h, w, b));
  const separate = run("fp8", separately);
  const [exact, bf16] = [run("no", separately), run("bf16", separately)];
  t.true(relative(fused.y, bf16.y) > 4 * relative(bf16.y, exact.y), "the matmul ran in fp8, not bf16");
  for (const name of ["y", "h", "w", "b"] as const) {
    t.is(fused[name].sub(separate[name]).abs().max().item(), 0, name);
  }
});

test("fp8: saveState and loadState carry the amax histories, so the losses after loading are the uninterrupted run's", (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), "acc-fp8-")), "ckpt");
  const setup = () => {
    manualSeed(3);
    const net = new nn.Sequential(new nn.Linear(64, 128), new nn.GELU(), new nn.Linear(128, 64));
    const acc = new Accelerator({ cpu: true, mixedPrecision: "fp8" });
    const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
    return { acc, model, opt };
  };
  // The batches after the save are 4x larger than those before: with the histories, their
  // first step scales by the earlier amaxes (and saturates); without, by its own.
  manualSeed(9);
  const batches = Array.from({ length: 8 }, (_, i) => randn([32, 64]).mul(i < 4 ? 1 : 4));
  const step = (run: ReturnType<typeof setup>, x: Tensor) => {
    const loss = run.model.forward(x).square().mean();
    run.acc.backward(loss);
    run.opt.step();
    run.opt.zeroGrad();
    return loss.item();
  };
  const first = setup();
  for (const x of batches.slice(0, 4)) step(first, x);
  first.acc.saveState(dir);
  t.true(existsSync(join(dir, "fp8_states_0.safetensors")));
  const uninterrupted = batches.slice(4).map((x) => step(first, x));
  const resumed = setup();
  resumed.acc.loadState(dir);
  t.deepEqual(batches.slice(4).map((x) => step(resumed, x)), uninterrupted);
  rmSync(join(dir, "fp8_states_0.safetensors"));
  const without = setup();
  without.acc.loadState(dir);
  t.notDeepEqual(batches.slice(4).map((x) => step(without, x)), uninterrupted, "the histories made the difference");
  // A state of the wrong shape is an Error naming the file, the key and the shape the engine keeps.
  saveSafetensors(join(dir, "fp8_states_0.safetensors"), { "0.weight": zeros([3, 4]) });
  t.throws(() => setup().acc.loadState(dir), { message: /fp8_states_0\.safetensors holds "0\.weight" of shape \[3, 4\]; an fp8 state is \[3, 19\]/ });
});

test("fp8: activation checkpointing trains exactly as without (the recomputation scales as the first pass did)", (t) => {
  class Block extends nn.Module {
    fc = new nn.Linear(32, 64);
    out = new nn.Linear(64, 32);
    forward(x: Tensor): Tensor {
      return x.add(this.out.forward(nn.functional.gelu(this.fc.forward(x))));
    }
  }
  class Net extends nn.Module {
    a = new Block();
    b = new Block();
    forward(x: Tensor): Tensor {
      return this.b.forward(this.a.forward(x));
    }
  }
  const train = (checkpointed: boolean) => {
    manualSeed(11);
    const net = new Net();
    const acc = new Accelerator({ cpu: true, mixedPrecision: "fp8" });
    const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.05 }));
    if (checkpointed) t.is(acc.enableActivationCheckpointing(model, Block), 2);
    manualSeed(12);
    const losses: number[] = [];
    for (let step = 0; step < 6; step++) {
      // Growing inputs: each step's delayed scales come from smaller earlier ones and saturate.
      const loss = model.forward(randn([16, 32]).mul(1 + step)).square().mean();
      acc.backward(loss);
      opt.step();
      opt.zeroGrad();
      losses.push(loss.item());
    }
    return { losses, w: net.a.fc.weight.to("float64") };
  };
  const [plain, checkpointed] = [train(false), train(true)];
  t.deepEqual(checkpointed.losses, plain.losses);
  t.is(checkpointed.w.sub(plain.w).abs().max().item(), 0);
});
