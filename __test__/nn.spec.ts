// nn: layers and losses against values recorded from PyTorch 2.11 (outputs and
// gradients), Module bookkeeping (names, state dicts, modes, devices), Sequential's
// native path, initialisation and the errors users see.
//
// Reference values come from ~/.cache/accelerate-ts/torch-2.11.0/bin/python, with
//   import torch, torch.nn as nn, torch.nn.functional as F
//   def wave(n, k, s=1.0): return (torch.arange(n, dtype=torch.float32) * k).sin() * s
//   def r(t): return [round(v, 6) for v in t.detach().flatten().tolist()]
import test, { type ExecutionContext } from "ava";
import { Accelerator, Tensor, arange, full, manualSeed, nn, noGrad, ones, randint, randn, tensor, tidy, where, zeros } from "../ts/index.js";
import { settle } from "./helpers/gc.js";

const F = nn.functional;

/** The same inputs as the Python helper `wave`: sin(arange(n) * k) * s in float32. */
function wave(n: number, k: number, s = 1): Tensor {
  return arange(0, n, 1, { dtype: "float32" }).mul(k).sin().mul(s);
}

function assertClose(t: ExecutionContext, actual: Tensor | null, expected: number[], label: string, tol = 1e-5): void {
  t.truthy(actual, `${label}: missing`);
  const values = Array.from(actual!.toTypedArray() as Float32Array);
  t.is(values.length, expected.length, `${label}: length`);
  const worst = Math.max(0, ...values.map((v, i) => Math.abs(v - expected[i]) - tol * Math.abs(expected[i])));
  t.true(worst <= tol, `${label}: ${JSON.stringify(values)} vs ${JSON.stringify(expected)}`);
}

test("Linear matches PyTorch: output and gradients for input, weight and bias", (t) => {
  // lin = nn.Linear(4, 3); lin.load_state_dict({"weight": <below>, "bias": <below>})
  // x = torch.tensor(<below>, requires_grad=True); y = lin(x); (y * g).sum().backward()
  const lin = new nn.Linear(4, 3);
  lin.loadStateDict({
    weight: tensor([[0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8], [-0.9, 1.0, 0.2, -0.3]]),
    bias: tensor([0.1, -0.2, 0.3]),
  });
  const x = tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.7, 2.0, 1.0]]);
  x.requiresGrad = true;
  const y = lin.forward(x);
  y.mul(tensor([[1.0, -1.0, 0.5], [2.0, 0.1, -0.3]])).sum().backward();
  assertClose(t, y, [-0.3, 2.6, 1.05, 1.27, -1.07, -0.57], "y");
  assertClose(t, x.grad, [-0.85, -0.3, 1.1, -0.55, 0.52, -0.64, 0.47, 0.97], "dx");
  assertClose(t, lin.weight.grad, [1.6, 0.6, 3.0, 2.5, -0.97, -2.07, 1.2, -0.4, 0.41, 1.21, -1.1, -0.05], "dW");
  assertClose(t, lin.bias!.grad, [3.0, -0.9, 0.2], "db");
});

test("Conv2d (stride 2, padding 1) matches PyTorch: output and gradients", (t) => {
  // conv = nn.Conv2d(2, 2, 2, stride=2, padding=1)
  // weight = wave(16, 0.6, 0.5).reshape(2, 2, 2, 2), bias = wave(2, 1.1, 0.3)
  // x = wave(18, 0.35).reshape(1, 2, 3, 3) (requires grad); (conv(x) * wave(8, 0.8).reshape(1, 2, 2, 2)).sum().backward()
  const conv = new nn.Conv2d(2, 2, 2, { stride: 2, padding: 1 });
  conv.loadStateDict({ weight: wave(16, 0.6, 0.5).reshape([2, 2, 2, 2]), bias: wave(2, 1.1, 0.3) });
  const x = wave(18, 0.35).reshape([1, 2, 3, 3]);
  x.requiresGrad = true;
  const y = conv.forward(x);
  t.deepEqual(y.shape, [1, 2, 2, 2]);
  y.mul(wave(8, 0.8).reshape([1, 2, 2, 2])).sum().backward();
  assertClose(t, y, [0.003664, 0.834631, 0.978024, 0.617715, 0.26563, 0.03585, -0.545476, -1.859843], "y");
  assertClose(t, x.grad, [
    -0.009093, 0.440033, 0.23141, 0.667101, 0.314423, 0.434608, 0.331543, 0.402972, 0.230566,
    -0.012029, -0.482104, -0.468561, -0.426827, -0.022383, -0.267513, -0.640871, -0.419193, -0.424437,
  ], "dx");
  assertClose(t, conv.weight.grad, [
    0.665635, 1.531699, 0.676766, 1.551247, -0.666577, -1.534814, -0.678034, -1.546212,
    -0.622082, -1.485254, -0.662106, -1.558911, 0.622962, 1.488422, 0.663971, 1.554984,
  ], "dW");
  assertClose(t, conv.bias!.grad, [2.392393, -2.442608], "db");
});

test("LayerNorm matches PyTorch: output and gradients for input, weight and bias", (t) => {
  // ln = nn.LayerNorm(4); ln.load_state_dict({"weight": torch.tensor([1.0, 0.5, -1.5, 2.0]), "bias": torch.tensor([0.1, 0.0, -0.2, 0.3])})
  // x = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.7, 2.0, 4.0]], requires_grad=True); (ln(x) * g).sum().backward()
  const ln = new nn.LayerNorm(4);
  t.deepEqual(ln.weight!.toArray(), [1, 1, 1, 1]);
  t.deepEqual(ln.bias!.toArray(), [0, 0, 0, 0]);
  ln.loadStateDict({ weight: tensor([1.0, 0.5, -1.5, 2.0]), bias: tensor([0.1, 0.0, -0.2, 0.3]) });
  const x = tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.7, 2.0, 4.0]]);
  x.requiresGrad = true;
  const y = ln.forward(x);
  y.mul(tensor([[1.0, -1.0, 0.5, 0.2], [2.0, 0.1, -0.3, 1.0]])).sum().backward();
  assertClose(t, y, [0.446409, 0.635083, 2.051656, 0.069061, -0.516364, -0.588347, -0.704298, 3.213721], "y");
  assertClose(t, x.grad, [0.825839, -0.728534, -0.453259, 0.355954, 0.643412, -0.31003, -0.461745, 0.128363], "dx");
  assertClose(t, ln.weight!.grad, [-0.886319, -1.387835, -0.851412, 1.433766], "dW");
  assertClose(t, ln.bias!.grad, [3.0, -0.9, 0.2, 1.2], "db");
});

test("crossEntropy matches PyTorch: reductions, label smoothing, ignoreIndex, probabilities, gradient", (t) => {
  // logits = (wave(12, 0.77) * 2).reshape(3, 4); t = torch.tensor([0, 3, 1])
  const logits = wave(12, 0.77).mul(2).reshape([3, 4]);
  logits.requiresGrad = true;
  const target = tensor([0, 3, 1]);
  // F.cross_entropy(logits, t).item()
  assertClose(t, F.crossEntropy(logits, target), [2.177947759628296], "mean");
  // F.cross_entropy(logits, t, reduction="sum").item()
  assertClose(t, F.crossEntropy(logits, target, { reduction: "sum" }), [6.533843040466309], "sum");
  // r(F.cross_entropy(logits, t, reduction="none"))
  assertClose(t, F.crossEntropy(logits, target, { reduction: "none" }), [2.820798, 2.117886, 1.595159], "none");
  // F.cross_entropy(logits, t, ignore_index=3).item()
  assertClose(t, F.crossEntropy(logits, target, { ignoreIndex: 3 }), [2.2079784870147705], "ignoreIndex");
  // F.cross_entropy(logits, torch.softmax(wave(12, 0.3).reshape(3, 4), 1)).item()
  assertClose(t, F.crossEntropy(logits, F.softmax(wave(12, 0.3).reshape([3, 4]), 1)), [1.6940017938613892], "probs");
  // F.cross_entropy(logits, t, label_smoothing=0.1).item(), then .backward(); r(logits.grad)
  const smoothed = F.crossEntropy(logits, target, { labelSmoothing: 0.1 });
  assertClose(t, smoothed, [2.1269373893737793], "labelSmoothing");
  smoothed.backward();
  assertClose(t, logits.grad, [
    -0.288481, 0.071554, 0.138221, 0.078706, 0.20707, 0.043506, 0.017662, -0.268238, 0.007513, -0.240708, 0.137874, 0.095321,
  ], "dlogits");
  t.is(F.crossEntropy(logits, tensor([0, 3, 1], { dtype: "int32" })).item(), F.crossEntropy(logits, target).item());
});

test("crossEntropy and other functions name themselves and the shapes in errors", (t) => {
  t.throws(() => F.crossEntropy(zeros([4, 10]), tensor([1, 2, 3, 4, 5])), {
    message: "crossEntropy: target of shape [5] does not fit logits of shape [4, 10] (class indices need shape [4])",
  });
  t.throws(() => F.crossEntropy(zeros([2, 3]), tensor([0, 1]), { labelSmoothing: 2 }), { message: /labelSmoothing must be in \[0, 1\]/ });
  t.throws(() => F.crossEntropy(zeros([2, 3]), tensor([0, 1]), { reduction: "avg" as "mean" }), { message: /crossEntropy: unknown reduction "avg"/ });
  t.throws(() => F.mseLoss(zeros([2, 3]), zeros([3])), { message: "mseLoss: input of shape [2, 3] and target of shape [3] differ; reshape one to match" });
  t.throws(() => F.linear(zeros([2, 3]), zeros([5, 4])), { message: /^linear: input of shape \[2, 3\] does not fit weight of shape \[5, 4\]/ });
  t.throws(() => new nn.Linear(4, 2).forward(zeros([5, 3])), { message: /^Linear: input of shape \[5, 3\] does not fit weight of shape \[2, 4\]/ });
  t.throws(() => new nn.Embedding(5, 2).forward(zeros([3])), { message: "Embedding: indices must be int64 or int32, got float32 (shape [3])" });
  t.throws(() => new nn.LayerNorm(4).forward(zeros([2, 5])), { message: "LayerNorm: input of shape [2, 5] does not end with the normalized shape [4]" });
  t.throws(() => F.softmax(zeros([2, 3]), 5), { message: /^softmax: .*\(shape \[2, 3\]\)$/ });
});

test("mseLoss, softmax, gelu, relu, maxPool and embedding match PyTorch", (t) => {
  // F.mse_loss(wave(6, 0.3), wave(6, 0.5)).item()
  assertClose(t, F.mseLoss(wave(6, 0.3), wave(6, 0.5)), [0.052676599472761154], "mse");
  assertClose(t, F.mseLoss(wave(6, 0.3), wave(6, 0.5), { reduction: "sum" }), [0.052676599472761154 * 6], "mse sum");
  const p = F.softmax(wave(6, 0.4).reshape([2, 3]), 1);
  assertClose(t, p.sum(1), [1, 1], "softmax rows");
  assertClose(t, F.logSoftmax(wave(6, 0.4).reshape([2, 3]), 1).exp(), Array.from(p.toTypedArray() as Float32Array), "logSoftmax");
  // r(F.gelu(wave(5, 0.9, 2))), r(F.gelu(wave(5, 0.9, 2), approximate="tanh"))
  assertClose(t, F.gelu(wave(5, 0.9, 2)), [0.0, 1.474851, 1.897589, 0.686935, -0.166447], "gelu");
  assertClose(t, new nn.GELU({ approximate: "tanh" }).forward(wave(5, 0.9, 2)), [0.0, 1.474654, 1.897642, 0.686833, -0.166559], "gelu tanh");
  t.deepEqual(F.relu(tensor([-1, 0.5])).toArray(), [0, 0.5]);
  t.deepEqual(new nn.ReLU().forward(tensor([-1, 0.5])).toArray(), [0, 0.5]);
  // r(F.max_pool2d(wave(16, 0.7).reshape(1, 1, 4, 4), 2))
  assertClose(t, new nn.MaxPool2d(2).forward(wave(16, 0.7).reshape([1, 1, 4, 4])), [0.644218, 0.98545, 0.854599, 0.988168], "maxPool");
  t.deepEqual(new nn.Flatten().forward(zeros([2, 3, 4])).shape, [2, 12]);
  t.deepEqual(new nn.Flatten(0, 1).forward(zeros([2, 3, 4])).shape, [6, 4]);
  const emb = new nn.Embedding(5, 2);
  emb.loadStateDict({ weight: arange(0, 10, 1, { dtype: "float32" }).reshape([5, 2]) });
  t.deepEqual(emb.forward(tensor([[4, 0], [1, 1]])).toArray(), [[[8, 9], [0, 1]], [[2, 3], [2, 3]]]);
});

test("CausalSelfAttention matches nanoGPT-style attention in PyTorch; scaledDotProductAttention too", (t) => {
  // D, H, T = 4, 2, 3; qkv = nn.Linear(D, 3 * D); proj = nn.Linear(D, D)
  // qkv.weight = wave(48, 0.37, 0.5).reshape(12, 4); qkv.bias = wave(12, 0.21, 0.1)
  // proj.weight = wave(16, 0.53, 0.5).reshape(4, 4); proj.bias = wave(4, 0.61, 0.1)
  // x = wave(T * D, 0.29).reshape(1, T, D)
  // q, k, v = qkv(x).split(D, dim=2); q, k, v = (z.view(1, T, H, D // H).transpose(1, 2) for z in (q, k, v))
  // y = F.scaled_dot_product_attention(q, k, v, is_causal=True); out = proj(y.transpose(1, 2).reshape(1, T, D))
  const attn = new nn.CausalSelfAttention(4, 2);
  t.deepEqual(attn.namedParameters().map(([n, p]) => [n, p.shape]), [
    ["qkv.weight", [12, 4]], ["qkv.bias", [12]], ["proj.weight", [4, 4]], ["proj.bias", [4]],
  ]);
  attn.loadStateDict({
    "qkv.weight": wave(48, 0.37, 0.5).reshape([12, 4]),
    "qkv.bias": wave(12, 0.21, 0.1),
    "proj.weight": wave(16, 0.53, 0.5).reshape([4, 4]),
    "proj.bias": wave(4, 0.61, 0.1),
  });
  const x = wave(12, 0.29).reshape([1, 3, 4]);
  // r(out)
  assertClose(t, attn.forward(x), [
    -0.068885, 0.52695, -0.327541, 0.066998, -0.01164, 0.714049, -0.58012, 0.143596, 0.038364, 0.558351, -0.467573, 0.181793,
  ], "attention");
  const [q, k, v] = attn.qkv.forward(x).split(4, 2).map((z) => z.view([1, 3, 2, 2]).transpose(1, 2));
  // r(y)
  assertClose(t, F.scaledDotProductAttention(q, k, v, { isCausal: true }), [
    0.196298, 0.862959, -0.105734, 1.552839, -0.102158, 1.235872, 0.128701, -0.686424, 0.546168, -1.284981, 0.488861, -0.974686,
  ], "sdpa");
  const causalMask = tensor([[true, false, false], [true, true, false], [true, true, true]]);
  assertClose(t, F.scaledDotProductAttention(q, k, v, { attnMask: causalMask }),
    Array.from(F.scaledDotProductAttention(q, k, v, { isCausal: true }).toTypedArray() as Float32Array), "mask = causal");
  t.throws(() => F.scaledDotProductAttention(q, k, v, { attnMask: causalMask, isCausal: true }), {
    message: "scaledDotProductAttention: pass either attnMask or isCausal, not both",
  });
  t.throws(() => attn.forward(zeros([1, 3, 5])), { message: "CausalSelfAttention: input must be [batch, time, 4], got shape [1, 3, 5]" });
});

class Scale extends nn.Module {
  factor: Tensor;
  constructor(value: number) {
    super();
    this.factor = tensor([value], { dtype: "float32" });
    this.factor.requiresGrad = true;
  }
  forward(x: Tensor): Tensor {
    return x.mul(this.factor);
  }
}

test("Sequential runs in one native call and gives what the JS loop gives, gradients included", (t) => {
  manualSeed(3);
  const seq = new nn.Sequential(new nn.Linear(6, 8), new nn.GELU(), new nn.Sequential(new nn.Linear(8, 8), new nn.ReLU()), new nn.Linear(8, 3));
  t.true(seq.runsNatively);
  const x = randn([5, 6]);
  const native = seq.forward(x);
  const loop = seq.forwardInJs(x);
  t.deepEqual(native.toArray(), loop.toArray());
  native.sum().backward();
  const nativeGrads = seq.parameters().map((p) => p.grad!.toArray());
  seq.zeroGrad();
  loop.sum().backward();
  t.deepEqual(seq.parameters().map((p) => p.grad!.toArray()), nativeGrads);
  // Only the native chain reports which layer failed.
  t.throws(() => seq.forward(zeros([5, 7])), { message: /^Sequential: layer 0 \(Linear\): Linear: input of shape \[5, 7\]/ });

  const mixed = new nn.Sequential(new nn.Linear(6, 3), new Scale(2));
  t.false(mixed.runsNatively);
  t.throws(() => mixed.forward(zeros([5, 7])), { message: /^Linear: input of shape \[5, 7\]/ });
  const first = mixed.at(0) as nn.Linear;
  t.deepEqual(mixed.forward(x).toArray(), first.forward(x).mul(2).toArray());
  t.is(mixed.length, 2);
  t.is([...mixed].length, 2);
  t.is(new nn.Sequential().forward(x), x);
});

test("Sequential notices a replaced child and per-child modes", (t) => {
  const seq = new nn.Sequential(new nn.Linear(2, 2), new nn.Dropout(0.5));
  seq.registerModule("1", new nn.ReLU());
  t.true(seq.runsNatively);
  t.true(seq.forward(randn([20, 2])).min().item() >= 0, "the new ReLU runs");
  seq.registerModule("1", new Scale(0));
  t.false(seq.runsNatively);
  t.deepEqual(seq.forward(tensor([[1.5, 2.5]])).toArray(), [[0, 0]]);
  const drop = new nn.Sequential(new nn.Dropout(0.5));
  drop.at(0)!.eval();
  t.false(drop.runsNatively, "child in eval mode under a training parent runs the JS loop");
  t.deepEqual(drop.forward(ones([50])).toArray(), new Array(50).fill(1));
});

test("parameter and module names follow PyTorch", (t) => {
  class Block extends nn.Module {
    ln = new nn.LayerNorm(4);
    attn = new nn.CausalSelfAttention(4, 2);
    mlp = new nn.Sequential(new nn.Linear(4, 16, { bias: false }), new nn.GELU(), new nn.Linear(16, 4));
    gate: Tensor;
    constructor() {
      super();
      this.gate = zeros([1]);
      this.gate.requiresGrad = true;
      this.registerBuffer("mask", ones([3, 3]));
      this.registerParameter("frozen", zeros([2]));
    }
    forward(x: Tensor): Tensor {
      return x;
    }
  }
  const block = new Block();
  t.deepEqual(block.namedParameters().map(([n]) => n), [
    "gate", "frozen", "ln.weight", "ln.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "mlp.0.weight", "mlp.2.weight", "mlp.2.bias",
  ]);
  t.deepEqual(block.namedBuffers().map(([n]) => n), ["mask"]);
  t.deepEqual(Object.keys(block.stateDict()), [
    "gate", "frozen", "mask", "ln.weight", "ln.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "mlp.0.weight", "mlp.2.weight", "mlp.2.bias",
  ]);
  t.deepEqual(block.namedModules().map(([n]) => n), ["", "ln", "attn", "attn.qkv", "attn.proj", "mlp", "mlp.0", "mlp.1", "mlp.2"]);
  t.deepEqual(block.namedChildren().map(([n]) => n), ["ln", "attn", "mlp"]);
  t.is((block.mlp.at(0) as nn.Linear).bias, null);
  t.throws(() => block.registerParameter("a.b", zeros([1])), { message: /registerParameter: name must be a non-empty string without "\."/ });
  const list = new nn.ModuleList([new nn.Linear(2, 2)]).push(new nn.Linear(2, 1));
  t.deepEqual(list.namedParameters().map(([n]) => n), ["0.weight", "0.bias", "1.weight", "1.bias"]);
});

test("tied weights are one tensor: shared by both layers, listed once, saved under both names", (t) => {
  class TiedLm extends nn.Module {
    tok = new nn.Embedding(6, 4);
    head = new nn.Linear(4, 6, { bias: false });
    constructor() {
      super();
      this.head.weight = this.tok.weight;
    }
    forward(idx: Tensor): Tensor {
      return this.head.forward(this.tok.forward(idx));
    }
  }
  const lm = new TiedLm();
  t.deepEqual(lm.namedParameters().map(([n]) => n), ["tok.weight"]);
  t.deepEqual(Object.keys(lm.stateDict()), ["tok.weight", "head.weight"]);
  nn.init.constant_(lm.tok.weight, 0.5);
  t.deepEqual(lm.forward(tensor([1])).toArray(), [new Array(6).fill(1)]);
  t.throws(() => {
    lm.head.weight = zeros([3, 4]);
  }, { message: "setParameter: Linear.weight has shape [6, 4], got a tensor of shape [3, 4]" });
});

test("stateDict shares storage, is detached, and loadStateDict round-trips into another model", (t) => {
  const make = () => new nn.Sequential(new nn.Linear(3, 4), new nn.ReLU(), new nn.Linear(4, 2));
  const a = make();
  const b = make();
  const x = randn([2, 3]);
  t.notDeepEqual(a.forward(x).toArray(), b.forward(x).toArray());
  const sd = a.stateDict();
  t.deepEqual(Object.keys(sd), ["0.weight", "0.bias", "2.weight", "2.bias"]);
  t.false(sd["0.weight"].requiresGrad);
  const result = b.loadStateDict(sd);
  t.deepEqual(result, { missingKeys: [], unexpectedKeys: [] });
  t.deepEqual(b.forward(x).toArray(), a.forward(x).toArray());
  nn.init.constant_((a.at(0) as nn.Linear).bias!, 7);
  t.deepEqual(sd["0.bias"].toArray(), [7, 7, 7, 7], "stateDict views share the parameters' storage");
  t.notDeepEqual((b.at(0) as nn.Linear).bias!.toArray(), [7, 7, 7, 7], "loading copied the values");
  t.true((b.at(0) as nn.Linear).weight.requiresGrad, "loaded parameters stay trainable leaves");
  const viaMap = make();
  viaMap.loadStateDict(new Map(Object.entries(sd)));
  t.deepEqual(viaMap.forward(x).toArray(), a.forward(x).toArray());
});

test("loadStateDict errors name the key (missing, unexpected, wrong shape) and change nothing", (t) => {
  class Net extends nn.Module {
    fc1 = new nn.Linear(4, 4);
    fc2 = new nn.Linear(4, 2);
    forward(x: Tensor): Tensor {
      return this.fc2.forward(this.fc1.forward(x));
    }
  }
  const net = new Net();
  const before = net.stateDict();
  const snapshot = Object.fromEntries(Object.entries(before).map(([k, v]) => [k, v.toArray()]));
  const full = () => Object.fromEntries(Object.entries(new Net().stateDict()));

  const missing = full();
  delete missing["fc2.bias"];
  t.throws(() => net.loadStateDict(missing), { message: /^loadStateDict: missing key "fc2\.bias"/ });
  t.throws(() => net.loadStateDict({ ...full(), "fc3.weight": zeros([1]) }), { message: /^loadStateDict: unexpected key "fc3\.weight"/ });
  t.throws(() => net.loadStateDict({ ...full(), "fc1.weight": zeros([3, 4]) }), {
    message: 'loadStateDict: "fc1.weight" has shape [3, 4] in the checkpoint but [4, 4] in the model',
  });
  t.throws(() => net.loadStateDict({ ...full(), "fc1.weight": zeros([3, 4]) }, { strict: false }), { message: /"fc1\.weight" has shape \[3, 4\]/ });
  t.deepEqual(Object.fromEntries(Object.entries(net.stateDict()).map(([k, v]) => [k, v.toArray()])), snapshot);

  const partial = net.loadStateDict({ "fc1.bias": zeros([4]), extra: zeros([1]) }, { strict: false });
  t.deepEqual(partial, { missingKeys: ["fc1.weight", "fc2.weight", "fc2.bias"], unexpectedKeys: ["extra"] });
  t.deepEqual(net.fc1.bias!.toArray(), [0, 0, 0, 0]);
});

test("train() and eval() switch Dropout on every descendant", (t) => {
  manualSeed(0);
  const model = new nn.Sequential(new nn.Linear(8, 8), new nn.Sequential(new nn.Dropout(0.5)));
  const dropout = (model.at(1) as nn.Sequential).at(0) as nn.Dropout;
  t.true(model.training && dropout.training);
  const x = ones([400]);
  const trained = dropout.forward(x).toArray() as number[];
  t.true(trained.every((v) => v === 0 || v === 2), "kept elements are scaled by 1/(1-p)");
  const zeroed = trained.filter((v) => v === 0).length;
  t.true(zeroed > 120 && zeroed < 280, `${zeroed} of 400 zeroed`);
  t.is(model.eval(), model);
  t.false(dropout.training);
  t.deepEqual(dropout.forward(x).toArray(), new Array(400).fill(1));
  model.train();
  t.true(dropout.training);
  t.deepEqual(F.dropout(x, 0.5, false).toArray(), new Array(400).fill(1));
  t.true((F.dropout(x, 0.5).toArray() as number[]).some((v) => v === 0));
  t.throws(() => new nn.Dropout(1.5), { message: "Dropout: dropout probability must be in [0, 1], got 1.5" });
});

test("to() moves in place: a parameter obtained before still sees later updates", (t) => {
  const model = new nn.Sequential(new nn.Linear(3, 2));
  const [weight] = model.parameters();
  t.is(model.to("cpu"), model);
  t.is(model.parameters()[0], weight);
  model.loadStateDict({ "0.weight": ones([2, 3]), "0.bias": zeros([2]) });
  t.deepEqual(weight.toArray(), [[1, 1, 1], [1, 1, 1]]);
  t.is(weight.device, "cpu");
  t.throws(() => model.to("tpu"), { message: /^to: unknown device "tpu"/ });
});

test("zeroGrad drops gradients like PyTorch's zero_grad()", (t) => {
  const lin = new nn.Linear(3, 2);
  lin.forward(ones([1, 3])).sum().backward();
  t.deepEqual(lin.bias!.grad!.toArray(), [1, 1]);
  lin.zeroGrad();
  t.is(lin.weight.grad, null);
  t.is(lin.bias!.grad, null);
});

test("default initialisation matches PyTorch bit for bit under the same seed", (t) => {
  // torch.manual_seed(0); l = nn.Linear(3, 2); l.weight.tolist(), l.bias.tolist()
  manualSeed(0);
  const lin = new nn.Linear(3, 2);
  t.deepEqual(lin.weight.toArray(), [
    [-0.004322517663240433, 0.3097158372402191, -0.4751853346824646],
    [-0.4248946011066437, -0.2223689705133438, 0.15482072532176971],
  ]);
  t.deepEqual(lin.bias!.toArray(), [-0.011439144611358643, 0.45777493715286255]);
  // torch.manual_seed(0); c = nn.Conv2d(1, 1, 2); r(c.weight), r(c.bias)
  manualSeed(0);
  const conv = new nn.Conv2d(1, 1, 2);
  assertClose(t, conv.weight, [-0.003743, 0.268222, -0.411523, -0.36797], "conv weight", 1e-6);
  assertClose(t, conv.bias, [-0.192577], "conv bias", 1e-6);
  // torch.manual_seed(0); r(nn.Embedding(3, 2).weight)
  manualSeed(0);
  assertClose(t, new nn.Embedding(3, 2).weight, [1.540996, -0.293429, -2.178789, 0.568431, -1.084522, -1.398595], "embedding", 1e-6);
  // torch.manual_seed(0); w = torch.empty(2, 3); nn.init.kaiming_uniform_(w); r(w)
  manualSeed(0);
  const w = nn.init.kaimingUniform_(zeros([2, 3]));
  assertClose(t, w, [-0.010588, 0.758646, -1.163962, -1.040775, -0.54469, 0.379232], "kaiming", 1e-6);
});

test("nn.init fills in place without recording gradients and returns the tensor", (t) => {
  const w = zeros([64, 32]);
  w.requiresGrad = true;
  t.is(nn.init.xavierUniform_(w, { gain: 2 }), w);
  const bound = 2 * Math.sqrt(6 / (64 + 32));
  t.true(w.abs().max().item() <= bound && w.abs().max().item() > 0.9 * bound);
  t.is(w.grad, null);
  t.true(w.requiresGrad);
  nn.init.kaimingNormal_(w, { mode: "fanOut", nonlinearity: "relu" });
  const std = w.std().item();
  t.true(Math.abs(std - Math.sqrt(2 / 64)) < 0.02, `std ${std}`);
  t.deepEqual(nn.init.ones_(zeros([2])).toArray(), [1, 1]);
  t.deepEqual(nn.init.zeros_(ones([2])).toArray(), [0, 0]);
  t.deepEqual(nn.init.constant_(zeros([2]), -3).toArray(), [-3, -3]);
  const u = nn.init.uniform_(zeros([1000]), { a: 2, b: 3 });
  t.true(u.min().item() >= 2 && u.max().item() < 3);
  const n = nn.init.normal_(zeros([4000]), { mean: 5, std: 0.1 });
  t.true(Math.abs(n.mean().item() - 5) < 0.01);
  t.is(nn.init.calculateGain("tanh"), 5 / 3);
  t.throws(() => nn.init.xavierNormal_(zeros([3])), { message: /^xavierNormal: fan in and fan out need a tensor with at least 2 dimensions/ });
});

test("modules built inside tidy() survive it when returned", (t) => {
  const model = tidy(() => new nn.Sequential(new nn.Linear(2, 2)));
  t.false(model.parameters().some((p) => p.isDisposed));
  const y = noGrad(() => model.forward(ones([1, 2])));
  t.false(y.requiresGrad);
  t.deepEqual(y.shape, [1, 2]);
});

test("a built-in layer's parameter cannot be disposed by hand: the layer keeps working and so does the property", (t) => {
  const net = new nn.Linear(4, 2);
  t.throws(() => net.weight.dispose(), { message: "dispose: this tensor is the parameter Linear.weight, which lives as long as its layer; detach() or clone() it for a tensor of your own" });
  t.deepEqual(net.forward(randn([1, 4])).shape, [1, 2]);
  t.true(Number.isFinite(net.weight.sum().item()));
  const other = new nn.Linear(4, 2);
  other.weight = net.weight; // tied: still the first layer's parameter
  t.throws(() => other.weight.dispose(), { message: /^dispose: this tensor is the parameter Linear\.weight/ });
  const copy = net.weight.clone();
  copy.dispose();
  t.true(copy.isDisposed, "a clone is the user's own");
});

test("linearCrossEntropy equals crossEntropy(linear(x, W), y) in value and gradients, in any chunking", (t) => {
  manualSeed(3);
  const reference = (x: Tensor, w: Tensor, y: Tensor) =>
    nn.functional.crossEntropy(x.matmul(w.t()).reshape([-1, w.shape[0]]), y.reshape([-1]), { ignoreIndex: 7 });
  const x0 = randn([3, 5, 16]);
  const w0 = randn([40, 16]);
  const y = randint(0, 40, [3, 5]);
  const targets = where(y.eq(3), full([3, 5], 7, { dtype: "int64" }), y); // some rows ignored
  const grads = (loss: (x: Tensor, w: Tensor) => Tensor) => {
    const [x, w] = [x0.clone(), w0.clone()];
    x.requiresGrad = true;
    w.requiresGrad = true;
    const value = loss(x, w);
    value.backward();
    return { value: value.item(), x: x.grad?.toTypedArray() as Float32Array, w: w.grad?.toTypedArray() as Float32Array };
  };
  const want = grads((x, w) => reference(x, w, targets));
  const worst = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])));
  for (const chunkRows of [1, 4, 15, 1000]) {
    const got = grads((x, w) => nn.functional.linearCrossEntropy(x, w, targets, { ignoreIndex: 7, chunkRows }));
    t.true(Math.abs(got.value - want.value) < 1e-5, `chunkRows ${chunkRows}: loss ${got.value} vs ${want.value}`);
    t.true(worst(got.x, want.x) < 1e-5, `chunkRows ${chunkRows}: input gradient`);
    t.true(worst(got.w, want.w) < 1e-5, `chunkRows ${chunkRows}: weight gradient`);
  }
  // Logits 1 000 apart: the loss is finite and equal to the reference (no underflow to log(0)).
  const far = grads((x, w) => nn.functional.linearCrossEntropy(x.mul(100), w, targets, { ignoreIndex: 7, chunkRows: 4 }));
  const farWant = grads((x, w) => reference(x.mul(100), w, targets));
  t.true(Number.isFinite(far.value) && Math.abs(far.value - farWant.value) < 1e-3 * Math.abs(farWant.value), `far logits: loss ${far.value} vs ${farWant.value}`);
  t.throws(() => nn.functional.linearCrossEntropy(x0, randn([40, 8]), targets), { message: /^linearCrossEntropy: input has 16 features but weight expects 8/ });
  t.throws(() => nn.functional.linearCrossEntropy(x0, w0, targets, { chunkRows: 0 }), { message: /^linearCrossEntropy: chunkRows must be positive, got 0/ });
});

test("linearCrossEntropy under bf16 autocast is as close to float64 as the plain head, also on confident rows", (t) => {
  manualSeed(5);
  const [rows, features, classes] = [64, 32, 300];
  const w0 = randn([classes, features]);
  const y = randint(0, classes, [rows]);
  // Most rows point straight at their target (probability near 1), the rest are uncertain.
  const x0 = w0.index(y).mul(1.0).add(randn([rows, features]).mul(0.3));
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const run = (loss: (x: Tensor, w: Tensor) => Tensor, dtype: "float32" | "float64", autocast: boolean) => {
    const [x, w] = [x0.to(dtype).clone(), w0.to(dtype).clone()];
    x.requiresGrad = true;
    w.requiresGrad = true;
    const value = autocast ? acc.autocast(() => loss(x, w)) : loss(x, w);
    value.backward();
    return { value: value.item(), x: x.grad as Tensor, w: w.grad as Tensor };
  };
  const plainLoss = (x: Tensor, w: Tensor) => nn.functional.crossEntropy(x.matmul(w.t()), y);
  const exact = run(plainLoss, "float64", false);
  const plain = run(plainLoss, "float32", true);
  const fused = run((x, w) => nn.functional.linearCrossEntropy(x, w, y, { chunkRows: 16 }), "float32", true);
  t.true(exact.value < 0.5, `mostly confident rows (loss ${exact.value})`);
  const error = (a: Tensor, b: Tensor) => a.to("float64").sub(b).square().sum().sqrt().item() / b.square().sum().sqrt().item();
  t.true(Math.abs(fused.value - exact.value) <= 2 * Math.abs(plain.value - exact.value) + 1e-3 * exact.value, `loss ${fused.value} / plain ${plain.value} / exact ${exact.value}`);
  for (const name of ["x", "w"] as const) {
    t.true(error(fused[name], exact[name]) <= 2 * error(plain[name], exact[name]) + 1e-3, `${name}: fused ${error(fused[name], exact[name])}, plain ${error(plain[name], exact[name])}`);
  }
});

test("linearCrossEntropy computes gradients only when backward may come (not under noGrad)", (t) => {
  const x = randn([15, 16]);
  const w = randn([40, 16]);
  w.requiresGrad = true;
  const y = randint(0, 40, [15]);
  const acc = new Accelerator({ cpu: true });
  const matmuls = (fn: () => void) => acc.profile(fn).rows.filter((r) => ["aten::mm", "aten::addmm", "aten::addmm_"].includes(r.name)).reduce((n, r) => n + r.count, 0);
  t.is(matmuls(() => noGrad(() => nn.functional.linearCrossEntropy(x, w, y, { chunkRows: 4 }))), 4, "one logits matmul per chunk");
  t.is(matmuls(() => nn.functional.linearCrossEntropy(x, w, y, { chunkRows: 4 })), 8, "and one weight-gradient matmul per chunk");
});

test("linear under bf16 autocast: a bf16 output, and float32 parameter gradients that are not rounded to bf16", (t) => {
  manualSeed(11);
  const [x0, w0, b0, g0] = [randn([2, 48, 64]), randn([24, 64]), randn([24]), randn([2, 48, 24])];
  // What the bf16 operands give in exact arithmetic.
  const [xb, wb, gb] = [x0, w0, g0].map((v) => v.to("bfloat16").to("float64"));
  const flat = (v: Tensor) => v.reshape([-1, 24]);
  const want = { w: flat(gb).t().matmul(xb.reshape([-1, 64])), b: flat(gb).sum(0), x: gb.matmul(wb) };
  const relative = (a: Tensor, e: Tensor) => a.to("float64").sub(e).abs().max().item() / e.abs().max().item();
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  // nn.functional.linear under autocast, and a prepared nn.Linear (autocast from prepare).
  const functional = () => {
    const [w, b] = [w0.clone(), b0.clone()];
    w.requiresGrad = true;
    b.requiresGrad = true;
    return { params: { w, b }, forward: (x: Tensor) => acc.autocast(() => F.linear(x, w, b)) };
  };
  const layer = () => {
    const net = new nn.Linear(64, 24);
    net.loadStateDict({ weight: w0, bias: b0 });
    const [model] = acc.prepare(net);
    return { params: { w: net.weight, b: net.bias as Tensor }, forward: (x: Tensor) => model.forward(x) };
  };
  for (const [label, make] of [["linear", functional], ["Linear", layer]] as const) {
    const { params, forward } = make();
    const x = x0.clone();
    x.requiresGrad = true;
    const y = forward(x);
    t.is(y.dtype, label === "linear" ? "bfloat16" : "float32", label); // a prepared model's outputs are float32, as HF's
    y.to("float32").mul(g0).sum().backward(); // y's gradient: g0 in bf16, as autocast hands it over
    for (const name of ["w", "b"] as const) {
      const grad = params[name].grad as Tensor;
      t.is(grad.dtype, "float32");
      // Rounding to bf16 would leave up to 2^-9 (2e-3); float32 sums leave about 1e-6.
      const error = relative(grad, want[name]);
      t.true(error < 2e-5, `${label}: ${name} gradient relative error ${error}`);
    }
    // The input's gradient is made in bf16, as autocast's.
    const error = relative(x.grad as Tensor, want.x);
    t.true(error < 1e-2 && error > 1e-5, `${label}: input gradient relative error ${error}`);
    t.is((x.grad as Tensor).dtype, "float32");
  }
});

test("linear under bf16 autocast: a weight used twice in a region is converted once; no bias, 1-d inputs and a backward inside autocast keep float32 gradients", (t) => {
  manualSeed(12);
  const [x1, x2, v, w0, g1, g2, gv] = [randn([32, 48]), randn([8, 48]), randn([48]), randn([16, 48]), randn([32, 16]), randn([8, 16]), randn([16])];
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const b16 = (t: Tensor) => t.to("bfloat16").to("float64");
  const relative = (a: Tensor, e: Tensor) => a.to("float64").sub(e).abs().max().item() / e.abs().max().item();
  // Two uses of one weight in one region (a shared layer, a recurrent loop) and a 1-d input.
  const w = w0.clone();
  w.requiresGrad = true;
  let ys: Tensor[] = [];
  const prof = acc.profile(() => {
    ys = acc.autocast(() => [F.linear(x1, w), F.linear(x2, w), F.linear(v, w)]);
  });
  t.is(prof.rows.find((r) => r.name === "aten::_to_copy")?.count, 4, "x1, x2, v and the weight once");
  t.deepEqual(ys[2].shape, [16]);
  const [y1, y2, yv] = ys;
  y1.to("float32").mul(g1).sum().add(y2.to("float32").mul(g2).sum()).add(yv.to("float32").mul(gv).sum()).backward();
  const want = b16(g1).t().matmul(b16(x1)).add(b16(g2).t().matmul(b16(x2))).add(b16(gv).reshape([16, 1]).matmul(b16(v).reshape([1, 48])));
  const error = relative(w.grad as Tensor, want);
  t.true(error < 2e-5, `weight gradient relative error ${error}`);
  // A backward that runs inside an autocast region (on the CPU, on the calling thread).
  const u = w0.clone();
  u.requiresGrad = true;
  acc.autocast(() => F.linear(x1, u).to("float32").mul(g1).sum().backward());
  const inside = relative(u.grad as Tensor, b16(g1).t().matmul(b16(x1)));
  t.true(inside < 2e-5, `backward inside autocast: relative error ${inside}`);
});

test("a Sequential under bf16 autocast converts its Linear weights and biases in one multi-tensor copy, and gives exactly what its layers give one by one", (t) => {
  manualSeed(13);
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const seq = new nn.Sequential(new nn.Linear(12, 16), new nn.ReLU(), new nn.Sequential(new nn.Linear(16, 16, { bias: false }), new nn.GELU()), new nn.Linear(16, 4));
  t.true(seq.runsNatively);
  const x = randn([8, 12]);
  const g = randn([8, 4]);
  // Each layer called on its own, the inner chain's too.
  const inner = seq.at(2) as nn.Sequential;
  const layers = [seq.at(0), seq.at(1), inner.at(0), inner.at(1), seq.at(3)].map((layer) => layer as nn.Module);
  const oneByOne = () => layers.reduce((h, layer) => layer.forward(h) as Tensor, x);
  const rows = (prof: { rows: { name: string; count: number }[] }, name: string) => prof.rows.find((r) => r.name === name)?.count ?? 0;
  const run = (native: boolean) => {
    seq.zeroGrad();
    let y: Tensor | undefined;
    const prof = acc.profile(() => {
      y = acc.autocast(() => (native ? seq.forward(x) : oneByOne()));
    });
    (y as Tensor).to("float32").mul(g).sum().backward();
    return { y: (y as Tensor).to("float32").toArray(), grads: seq.parameters().map((p) => p.grad!.toArray()), copies: rows(prof, "aten::_foreach_copy_"), casts: rows(prof, "aten::_to_copy") };
  };
  const [native, loop] = [run(true), run(false)];
  t.deepEqual(native.y, loop.y);
  t.deepEqual(native.grads, loop.grads);
  // The chain: one copy for its input and 5 weights and biases; one by one, 6 conversions.
  t.is(native.copies, 1);
  t.is(native.casts, 0);
  t.is(loop.copies, 0);
  t.is(loop.casts, 6);
  // Twice in one region: the weights are converted once; the input, which the first layer
  // takes from the cache (a region of many steps keeps no inputs), is converted ahead again.
  const twice = acc.profile(() => acc.autocast(() => [seq.forward(x), seq.forward(x)]));
  t.is(rows(twice, "aten::_foreach_copy_"), 2);
  t.is(rows(twice, "aten::_to_copy"), 0);
  // Each copy's conversions are views of one allocation, not allocated one by one.
  t.is(rows(twice, "aten::empty_like"), 0);
  // Without gradients nothing is converted ahead (linear then leaves conversions to autocast).
  const prof = acc.profile(() => noGrad(() => acc.autocast(() => seq.forward(x))));
  t.is(rows(prof, "aten::_foreach_copy_"), 0);
});

test("a Sequential of Linear and ReLU layers runs as one autograd node (without gradients, as one call) and gives its layers' values and gradients, in float32 and under bf16 autocast", (t) => {
  manualSeed(17);
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  // A 3-d input that wants its gradient, a layer without bias, a ReLU after the last layer.
  const seq = new nn.Sequential(new nn.Linear(12, 16), new nn.ReLU(), new nn.Linear(16, 16, { bias: false }), new nn.ReLU(), new nn.Linear(16, 4), new nn.ReLU());
  const layers = [0, 1, 2, 3, 4, 5].map((i) => seq.at(i) as nn.Module);
  const x = randn([2, 8, 12]).mul(2);
  const g = randn([2, 8, 4]);
  const rows = (prof: { rows: { name: string; count: number }[] }, part: string) =>
    prof.rows.filter((r) => r.name.includes(part)).reduce((sum, r) => sum + r.count, 0);
  const run = (native: boolean, autocast: boolean) => {
    seq.zeroGrad();
    const input = x.detach();
    input.requiresGrad = true;
    const forward = () => (native ? seq.forward(input) : layers.reduce((h, layer) => layer.forward(h) as Tensor, input));
    let y: Tensor | undefined;
    const prof = acc.profile(() => {
      y = autocast ? acc.autocast(forward) : forward();
      (y as Tensor).to("float32").mul(g).sum().backward();
    });
    const grads = [input, ...seq.parameters()].map((p) => p.grad!.toArray());
    return { y: (y as Tensor).to("float32").toArray(), dtype: (y as Tensor).dtype, grads, prof };
  };
  for (const autocast of [false, true]) {
    const [native, loop] = [run(true, autocast), run(false, autocast)];
    const label = autocast ? "bf16 autocast" : "float32";
    t.is(native.dtype, autocast ? "bfloat16" : "float32", label);
    // The same matmuls: equal up to the order of a sum's terms.
    const near = (a: unknown, b: unknown, what: string) => {
      const [fa, fb] = [(a as number[]).flat(9) as number[], (b as number[]).flat(9) as number[]];
      t.is(fa.length, fb.length, `${label} ${what}`);
      const worst = Math.max(...fa.map((v, i) => Math.abs(v - fb[i]) / (1e-3 + Math.abs(fb[i]))));
      t.true(worst < (autocast ? 1e-2 : 1e-5), `${label} ${what}: ${worst}`);
    };
    near(native.y, loop.y, "output");
    native.grads.forEach((grad, i) => near(grad, loop.grads[i], `gradient ${i}`));
    // One node in the graph, the ReLUs inside it; one by one, each layer records its own.
    t.is(rows(native.prof, "LinearChain"), 2, `${label}: the node, recorded and run`);
    t.is(rows(native.prof, "ReluBackward0"), 0, label);
    t.true(rows(loop.prof, "ReluBackward0") >= 3, label);
  }
  // A frozen first layer: its parameters get no gradient, the later ones theirs.
  for (const p of (seq.at(0) as nn.Linear).parameters()) p.requiresGrad = false;
  seq.zeroGrad();
  seq.forward(x).mul(g).sum().backward();
  t.deepEqual(seq.parameters().map((p) => p.grad === null), [true, true, false, false, false]);
  // Without gradients (evaluation) the chain is one call too, recording no node: the ReLUs
  // inside its products, the output the same as with gradients; under autocast its
  // parameters and input converted at once.
  for (const autocast of [false, true]) {
    const forward = () => (autocast ? acc.autocast(() => seq.forward(x)) : seq.forward(x));
    let y: Tensor | undefined;
    const prof = acc.profile(() => (y = noGrad(forward)));
    t.is(rows(prof, "LinearChain"), 0);
    t.true(rows(prof, "aten::_addmm_activation") >= 1, `autocast ${autocast}`);
    // (nn.ReLU's own operator; the chain's products apply theirs in place, aten::relu_.)
    t.false(prof.rows.some((r) => r.name === "aten::relu"), `autocast ${autocast}`);
    t.is(rows(prof, "aten::_foreach_copy_"), autocast ? 1 : 0);
    t.false((y as Tensor).requiresGrad);
    t.deepEqual((y as Tensor).toArray(), forward().toArray(), `autocast ${autocast}`);
  }
});

test("addLayerNorm gives exactly residual.add(x) and the LayerNorm of it, values and gradients; under autocast normed is bf16", (t) => {
  manualSeed(7);
  const [r0, x0, g1, g2] = [randn([2, 6, 16]), randn([2, 6, 16]), randn([2, 6, 16]), randn([2, 6, 16])];
  const state = { weight: randn([16]).mul(0.5).add(1), bias: randn([16]).mul(0.1) };
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const run = (fused: boolean, xDtype: "float32" | "bfloat16", autocast: boolean, useSum: boolean) => {
    const ln = new nn.LayerNorm(16);
    ln.loadStateDict(state);
    const [r, x] = [r0.clone(), x0.to(xDtype).detach()];
    for (const p of [r, x]) p.requiresGrad = true;
    const forward = () => {
      if (fused) return F.addLayerNorm(r, x, ln.weight, ln.bias);
      const sum = r.add(x);
      return [sum, ln.forward(sum)] as const;
    };
    const [sum, normed] = autocast ? acc.autocast(forward) : forward();
    // Under autocast the Linear that reads normed would convert it to bf16: the same value.
    const read = autocast ? normed.to("bfloat16") : normed;
    const loss = read.to("float32").mul(g2).sum();
    (useSum ? loss.add(sum.mul(g1).sum()) : loss).backward();
    const w = ln.weight as Tensor;
    const b = ln.bias as Tensor;
    return { sum, normedDtype: normed.dtype, normed: read, r: r.grad as Tensor, x: x.grad as Tensor, w: w.grad as Tensor, b: b.grad as Tensor };
  };
  for (const xDtype of ["float32", "bfloat16"] as const) {
    for (const autocast of [false, true]) {
      for (const useSum of [true, false]) {
        const label = `x ${xDtype}, autocast ${autocast}, sum used ${useSum}`;
        const [got, want] = [run(true, xDtype, autocast, useSum), run(false, xDtype, autocast, useSum)];
        t.is(got.sum.dtype, "float32", label);
        t.is(got.normedDtype, autocast ? "bfloat16" : "float32", label);
        t.is(got.x.dtype, xDtype, `${label}: x's gradient`);
        for (const name of ["sum", "normed", "r", "x", "w", "b"] as const) {
          t.deepEqual(got[name].shape, want[name].shape, `${label}: ${name}`);
          t.is(got[name].to("float32").sub(want[name].to("float32")).abs().max().item(), 0, `${label}: ${name}`);
        }
      }
    }
  }
  const [sum, normed] = F.addLayerNorm(randn([3, 8]), randn([3, 8]), null, null, { eps: 0.1 });
  const expected = new nn.LayerNorm(8, { elementwiseAffine: false, eps: 0.1 }).forward(sum);
  t.is(normed.sub(expected).abs().max().item(), 0, "without weight and bias, with eps");
});

test("addLayerNorm refuses mismatched shapes, widths and dtypes, naming the argument", (t) => {
  const [r, x, w] = [randn([4, 16]), randn([4, 16]), randn([16])];
  t.throws(() => F.addLayerNorm(r, randn([4, 8]), w, null), { message: /^addLayerNorm: residual of shape \[4, 16\] and x of shape \[4, 8\] differ/ });
  t.throws(() => F.addLayerNorm(r, x, randn([8]), null), { message: /^addLayerNorm: weight of shape \[8\] does not match the width 16/ });
  t.throws(() => F.addLayerNorm(r, x, w, randn([4])), { message: /^addLayerNorm: bias of shape \[4\] does not match the width 16/ });
  t.throws(() => F.addLayerNorm(randint(0, 3, [4, 16]), x, w, null), { message: /^addLayerNorm: residual must be floating point, got int64/ });
  t.throws(() => F.addLayerNorm(r, x, w, null, { epsilon: 1 } as never), { message: /^addLayerNorm: unknown option "epsilon"; the options are: eps/ });
  t.throws(() => F.addLayerNorm(r, [1] as never, w, null), { message: /^addLayerNorm: .*expected a Tensor/ });
});

test("geluLinear gives exactly linear(gelu(x), W, b)'s value and gradients, in float32 and under bf16 autocast", (t) => {
  manualSeed(6);
  const [x0, w0, b0] = [randn([3, 5, 16]), randn([12, 16]), randn([12])];
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  type Run = { y: Tensor; x: Tensor; w: Tensor; b?: Tensor };
  const run = (fn: (x: Tensor, w: Tensor, b?: Tensor) => Tensor, bias: boolean, autocast: boolean): Run => {
    const [x, w, b] = [x0.clone(), w0.clone(), b0.clone()];
    for (const p of [x, w, b]) p.requiresGrad = true;
    const y = autocast ? acc.autocast(() => fn(x, w, bias ? b : undefined)) : fn(x, w, bias ? b : undefined);
    y.square().mean().backward();
    return { y, x: x.grad as Tensor, w: w.grad as Tensor, b: bias ? (b.grad as Tensor) : undefined };
  };
  for (const approximate of ["none", "tanh"] as const) {
    for (const bias of [true, false]) {
      for (const autocast of [false, true]) {
        const want = run((x, w, b) => F.linear(F.gelu(x, { approximate }), w, b), bias, autocast);
        const got = run((x, w, b) => F.geluLinear(x, w, b, { approximate }), bias, autocast);
        const label = `${approximate}, bias ${bias}, autocast ${autocast}`;
        t.is(got.y.dtype, autocast ? "bfloat16" : "float32", label);
        t.deepEqual(got.y.shape, [3, 5, 12]);
        for (const name of ["y", "x", "w", "b"] as const) {
          const [a, e] = [got[name], want[name]];
          if (!a || !e) {
            t.is(a, e, `${label}: ${name}`);
            continue;
          }
          t.is(a.dtype, e.dtype, `${label}: ${name} dtype`);
          // The same operations in the same dtypes: the same numbers.
          t.is(a.to("float32").sub(e.to("float32")).abs().max().item(), 0, `${label}: ${name}`);
        }
      }
    }
  }
});

test("geluLinear recomputes the GELU in backward; without gradients it runs once", (t) => {
  const acc = new Accelerator({ cpu: true });
  const [x, w] = [randn([8, 16]), randn([4, 16])];
  x.requiresGrad = true;
  w.requiresGrad = true;
  const gelus = (fn: () => void) => acc.profile(fn).rows.filter((r) => r.name === "aten::gelu").reduce((n, r) => n + r.count, 0);
  t.is(gelus(() => F.geluLinear(x, w).sum().backward()), 2, "forward, and again in backward");
  t.is(gelus(() => F.linear(F.gelu(x), w).sum().backward()), 1);
  t.is(gelus(() => noGrad(() => F.geluLinear(x, w))), 1);
  const frozen = randn([8, 16]);
  t.is(gelus(() => F.geluLinear(frozen, w).sum().backward()), 1, "an input that needs no gradient: the hidden is kept instead, as the separate calls keep it");
});

test.serial("geluLinear keeps only its input for backward: the GELU's output is not stored", async (t) => {
  // 64 MiB of hidden activations: glibc maps a block this large on its own and unmaps it when
  // freed, so resident memory follows what the graph holds.
  const [x, w, b] = [randn([4096, 4096]), randn([16, 4096]), randn([16])];
  x.requiresGrad = true; // as an MLP's hidden activation, which comes from the first Linear
  w.requiresGrad = true;
  const held = async (fn: () => Tensor) => {
    await settle();
    const start = process.memoryUsage().rss;
    const y = fn();
    await settle();
    const grown = (process.memoryUsage().rss - start) / 2 ** 20;
    y.sum().backward();
    return grown;
  };
  const plain = await held(() => F.linear(F.gelu(x), w, b));
  const fused = await held(() => F.geluLinear(x, w, b));
  t.true(plain > 48, `the plain pair holds the GELU's output: ${plain.toFixed(1)} MiB`);
  t.true(fused < 16, `geluLinear holds ${fused.toFixed(1)} MiB`);
});

test("geluLinear refuses what linear and gelu refuse, naming the argument", (t) => {
  const [x, w] = [randn([4, 16]), randn([8, 16])];
  t.throws(() => F.geluLinear(x, randn([8, 6])), { message: /^geluLinear: input of shape \[4, 16\] does not fit weight of shape \[8, 6\]/ });
  t.throws(() => F.geluLinear(x, w, randn([3])), { message: /^geluLinear: / });
  t.throws(() => F.geluLinear(x, w, null, { approximate: "fast" as never }), { message: /^geluLinear: unknown approximate "fast" \(expected "none" or "tanh"\)/ });
  t.throws(() => F.geluLinear(x, w, null, { approx: "tanh" } as never), { message: /^geluLinear: unknown option "approx"; the options are: approximate/ });
  t.throws(() => F.geluLinear(x.to("float64"), w), { message: /^geluLinear: input is float64 but weight is float32 \(convert one, or run under autocast\)/ });
  t.throws(() => F.geluLinear(x, w, randn([8]).to("float64")), { message: /^geluLinear: input is float32 but bias is float64/ });
  t.throws(() => F.geluLinear(x, [1] as never), { message: /^geluLinear: .*expected a Tensor/ });
  t.throws(() => F.geluLinear(randint(0, 3, [4, 16]), w), { message: /^geluLinear: / });
  t.deepEqual(F.geluLinear(randn([16]), w).shape, [8], "a single sample");
  // Autocast leaves float64 alone, in the separate calls and here.
  const acc = new Accelerator({ cpu: true, mixedPrecision: "bf16" });
  const [x64, w64] = [x.to("float64"), w.to("float64")];
  const [fused, separate] = acc.autocast(() => [F.geluLinear(x64, w64), F.linear(F.gelu(x64), w64)]);
  t.is(fused.dtype, "float64");
  t.is(fused.sub(separate).abs().max().item(), 0);
});

test("linearCrossEntropy refuses what crossEntropy refuses, naming the argument, and follows it at the edges", (t) => {
  const x = randn([3, 5, 16]);
  const w = randn([40, 16]);
  const lce = (input: Tensor, weight: Tensor, targets: Tensor, ignoreIndex?: number) => nn.functional.linearCrossEntropy(input, weight, targets, { ignoreIndex });
  const y = randint(0, 40, [3, 5]);
  t.throws(() => lce(x, w, where(y.eq(y.max()), full([3, 5], -1, { dtype: "int64" }), y)), { message: /^linearCrossEntropy: targets hold -1, which is neither a class in \[0, 40\) nor the ignoreIndex -100/ });
  t.throws(() => lce(x, w, where(y.eq(y.max()), full([3, 5], 40, { dtype: "int64" }), y), 7), { message: /^linearCrossEntropy: targets hold 40, which is neither a class in \[0, 40\) nor the ignoreIndex 7/ });
  t.throws(() => lce(x, w, y.to("float32")), { message: /^linearCrossEntropy: targets must hold class indices \(an integer dtype\), got float32/ });
  t.throws(() => lce(x, w, y.reshape([15])), { message: /^linearCrossEntropy: targets of shape \[15\] do not fit input of shape \[3, 5, 16\]/ });
  t.throws(() => lce(x.to("float64"), w, y), { message: /^linearCrossEntropy: input is float64 but weight is float32/ });
  t.throws(() => lce(randn([]), w, y), { message: /^linearCrossEntropy: input must have a features dimension/ });
  t.throws(() => lce(y, w, y), { message: /^linearCrossEntropy: input and weight must be floating-point, got int64 and float32/ });
  t.throws(() => nn.functional.linearCrossEntropy(x, w, [1, 2] as never), { message: /^linearCrossEntropy: .*expected a Tensor/ });
  t.throws(() => nn.functional.linearCrossEntropy(x, w, y, { chunk_rows: 4 } as never), { message: /^linearCrossEntropy: unknown option "chunk_rows" \(did you mean "chunkRows"\?\); the options are: ignoreIndex, chunkRows/ });
  // Every target ignored: NaN, as crossEntropy; the gradients are zero.
  const x1 = x.clone();
  x1.requiresGrad = true;
  const ignored = lce(x1, w, full([3, 5], -100, { dtype: "int64" }));
  t.true(Number.isNaN(ignored.item()));
  t.true(Number.isNaN(nn.functional.crossEntropy(x.matmul(w.t()).reshape([-1, 40]), full([15], -100, { dtype: "int64" })).item()));
  ignored.backward();
  t.is((x1.grad as Tensor).abs().max().item(), 0);
  // float64 in, float64 out, to float64's precision.
  const [x64, w64] = [x.to("float64"), w.to("float64")];
  const exact = lce(x64, w64, y);
  t.is(exact.dtype, "float64");
  const want = nn.functional.crossEntropy(x64.matmul(w64.t()).reshape([-1, 40]), y.reshape([-1])).item();
  t.true(Math.abs(exact.item() - want) < 1e-12, `${exact.item()} vs ${want}`);
});
