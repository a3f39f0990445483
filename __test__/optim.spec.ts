// optim: optimizers against torch 2.11's updates, state dicts, zeroGrad, gradient
// clipping, and learning-rate schedules against PyTorch / transformers formulas.
import test, { type ExecutionContext } from "ava";
import { optim, tensor, type Tensor } from "../ts/index.js";

const { SGD, Adam, AdamW, clipGradNorm, clipGradValue, lrScheduler } = optim;

/*
 * The shared example. Reference values come from this Python (torch 2.11.0):
 *
 *   import torch
 *   def setup():
 *       p1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, -0.25, 2.0]], requires_grad=True)
 *       p2 = torch.tensor([0.3, -0.7], requires_grad=True)
 *       return p1, p2
 *   c = torch.tensor([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]])
 *   def loss(p1, p2): return (p1 * c).sum() + (p2 ** 2).sum()
 *   def run(make, steps=3):
 *       p1, p2 = setup(); opt = make(p1, p2)
 *       for _ in range(steps):
 *           opt.zero_grad(); loss(p1, p2).backward(); opt.step()
 *       return [p1.detach().flatten().tolist(), p2.detach().tolist()]
 */
function setup(): [Tensor, Tensor] {
  const p1 = tensor([[1.0, -2.0, 3.0], [0.5, -0.25, 2.0]]);
  const p2 = tensor([0.3, -0.7]);
  p1.requiresGrad = true;
  p2.requiresGrad = true;
  return [p1, p2];
}

function backward(p1: Tensor, p2: Tensor): void {
  const c = tensor([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]]);
  p1.mul(c).sum().add(p2.square().sum()).backward();
}

function train(opt: { step(): void; zeroGrad(): void }, p1: Tensor, p2: Tensor, steps = 3): void {
  for (let i = 0; i < steps; i++) {
    opt.zeroGrad();
    backward(p1, p2);
    opt.step();
  }
}

const values = (t: Tensor): number[] => Array.from(t.toTypedArray() as Float32Array);

function assertClose(t: ExecutionContext, actual: number[], expected: number[], tol = 1e-6): void {
  t.is(actual.length, expected.length);
  actual.forEach((a, i) => {
    t.true(Math.abs(a - expected[i]) <= tol, `element ${i}: ${a} vs ${expected[i]}`);
  });
}

test("AdamW matches torch.optim.AdamW over 3 steps with weight decay", (t) => {
  // run(lambda a, b: torch.optim.AdamW([a, b], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1))
  const [p1, p2] = setup();
  train(new AdamW([p1, p2], { lr: 0.1, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.1 }), p1, p2);
  assertClose(t, values(p1), [
    0.6732890605926514, -1.6435879468917847, 2.6138875484466553, 0.18813949823379517, 0.05443522706627846,
    1.6435879468917847,
  ]);
  assertClose(t, values(p2), [0.007791571319103241, -0.3850988447666168]);
});

test("Adam with amsgrad and weight decay matches torch.optim.Adam", (t) => {
  // run(lambda a, b: torch.optim.Adam([a, b], lr=0.05, weight_decay=0.1, amsgrad=True))
  const [p1, p2] = setup();
  train(new Adam([p1, p2], { lr: 0.05, weightDecay: 0.1, amsgrad: true }), p1, p2);
  assertClose(t, values(p1), [
    0.850136935710907, -1.8500640392303467, 2.850041627883911, 0.3500564396381378, -0.10004796087741852,
    1.8500308990478516,
  ]);
  assertClose(t, values(p2), [0.15177081525325775, -0.5504950284957886]);
});

test("SGD with nesterov momentum and weight decay matches torch.optim.SGD", (t) => {
  // run(lambda a, b: torch.optim.SGD([a, b], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01))
  const [p1, p2] = setup();
  train(new SGD([p1, p2], { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 0.01 }), p1, p2);
  assertClose(t, values(p1), [
    0.9116138815879822, -1.8232277631759644, 2.7348415851593018, 0.1745784729719162, 0.15376371145248413,
    1.501823902130127,
  ]);
  assertClose(t, values(p2), [-0.033495333045721054, 0.0781557634472847]);
});

test("param groups keep their own options, as torch param groups", (t) => {
  // run(lambda a, b: torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01, "momentum": 0.5}],
  //                                  momentum=0.9, dampening=0.1))
  const [p1, p2] = setup();
  const opt = new SGD(
    [
      { params: [p1], lr: 0.1 },
      { params: [p2], lr: 0.01, momentum: 0.5 },
    ],
    { momentum: 0.9, dampening: 0.1 },
  );
  t.is(opt.paramGroups.length, 2);
  t.is(opt.paramGroups[0].momentum, 0.9);
  t.is(opt.paramGroups[1].momentum, 0.5);
  t.is(opt.paramGroups[1].dampening, 0.1);
  t.is(opt.paramGroups[1].params[0], p2);
  train(opt, p1, p2);
  assertClose(t, values(p1), [
    0.9467999935150146, -1.8935999870300293, 2.840400218963623, 0.28720003366470337, 0.015999993309378624,
    1.6807998418807983,
  ]);
  assertClose(t, values(p2), [0.2764192521572113, -0.6449782252311707]);
});

test("a group's lr can be set between steps and bad values are refused", (t) => {
  const [p1] = setup();
  const opt = new SGD([p1], { lr: 0.1 });
  opt.paramGroups[0].lr = 0.5;
  t.is(opt.paramGroups[0].lr, 0.5);
  p1.mul(tensor([[1, 1, 1], [1, 1, 1]], { dtype: "float32" })).sum().backward();
  opt.step();
  // Plain SGD: p - 0.5 * 1
  t.deepEqual(values(p1), [0.5, -2.5, 2.5, 0, -0.75, 1.5]);
  t.throws(() => (opt.paramGroups[0].lr = -1), { message: "SGD: param group 0: invalid lr -1: it must be >= 0" });
  t.is(opt.paramGroups[0].lr, 0.5);
});

test("maximize ascends the gradient", (t) => {
  const [p1] = setup();
  const opt = new SGD([p1], { lr: 0.5, maximize: true });
  p1.sum().backward();
  opt.step();
  t.deepEqual(values(p1), [1.5, -1.5, 3.5, 1, 0.25, 2.5]);
});

test("stateDict → new optimizer → loadStateDict continues identically", (t) => {
  const [p1, p2] = setup();
  const first = new AdamW([p1, p2], { lr: 0.1, betas: [0.9, 0.99], weightDecay: 0.1, amsgrad: true });
  train(first, p1, p2, 2);
  const sd = first.stateDict();
  t.deepEqual(Object.keys(sd.state).sort(), [
    "0.exp_avg", "0.exp_avg_sq", "0.max_exp_avg_sq", "0.step", "1.exp_avg", "1.exp_avg_sq", "1.max_exp_avg_sq", "1.step",
  ]);
  t.is(sd.state["0.step"].item(), 2);
  t.deepEqual(sd.paramGroups, [
    { lr: 0.1, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.1, amsgrad: true, maximize: false, params: [0, 1] },
  ]);

  const q1 = tensor(p1.toArray() as number[][]);
  const q2 = tensor(p2.toArray() as number[]);
  q1.requiresGrad = true;
  q2.requiresGrad = true;
  const second = new AdamW([q1, q2]);
  second.loadStateDict(sd);
  t.is(second.paramGroups[0].lr, 0.1);
  t.true(second.paramGroups[0].amsgrad);
  train(first, p1, p2, 2);
  train(second, q1, q2, 2);
  t.deepEqual(values(q1), values(p1));
  t.deepEqual(values(q2), values(p2));
});

test("loadStateDict throws Errors naming what mismatched", (t) => {
  const [p1, p2] = setup();
  const opt = new Adam([p1, p2]);
  train(opt, p1, p2, 1);
  const sd = opt.stateDict();
  const [r1] = setup();
  t.throws(() => new Adam([r1]).loadStateDict(sd), {
    message: "Adam.loadStateDict: param group 0 has 2 parameters in the state dict but 1 in this optimizer",
  });
  t.throws(() => new Adam([{ params: [r1] }, { params: [p2] }]).loadStateDict(sd), {
    message: "Adam.loadStateDict: the state dict has 1 param groups but this optimizer has 2",
  });
  const [s1, s2] = setup();
  const swapped = { ...sd, state: { ...sd.state, "0.exp_avg": sd.state["1.exp_avg"] } };
  t.throws(() => new Adam([s1, s2]).loadStateDict(swapped), {
    message: "Adam.loadStateDict: state 0.exp_avg has shape [2] but its parameter has shape [2, 3]",
  });
  t.throws(() => new SGD([s1, s2]).loadStateDict(sd as never), {
    message: /SGD\.loadStateDict: param group 0: unknown option betas/,
  });
});

test("zeroGrad sets grads to null by default, or to zeros", (t) => {
  const [p1, p2] = setup();
  const opt = new SGD([p1, p2], { lr: 0.1 });
  backward(p1, p2);
  opt.zeroGrad(false);
  t.deepEqual(values(p1.grad as Tensor), [0, 0, 0, 0, 0, 0]);
  opt.zeroGrad();
  t.is(p1.grad, null);
  t.is(p2.grad, null);
});

test("parameters without gradients are skipped; one that does not require grad is accepted", (t) => {
  const [p1, p2] = setup();
  const frozen = tensor([1, 2], { dtype: "float32" });
  const opt = new Adam([p1, p2, frozen], { lr: 0.1 });
  p2.square().sum().backward();
  opt.step();
  t.deepEqual(values(p1), [1.0, -2.0, 3.0, 0.5, -0.25, 2.0]);
  t.deepEqual(values(frozen), [1, 2]);
  // First Adam step moves each element by lr against the gradient's sign.
  assertClose(t, values(p2), [0.2, -0.6]);
  t.deepEqual(Object.keys(opt.stateDict().state).sort(), ["1.exp_avg", "1.exp_avg_sq", "1.step"]);
});

test("bad options and params throw Errors naming the optimizer and option", (t) => {
  const [p1] = setup();
  t.throws(() => new AdamW([p1], { lr: -0.001 }), { message: "AdamW: invalid lr -0.001: it must be >= 0" });
  t.throws(() => new Adam([p1], { betas: [0.9, 1] }), { message: "Adam: invalid betas[1] 1: it must be in [0, 1)" });
  t.throws(() => new AdamW([p1], { eps: -1 }), { message: "AdamW: invalid eps -1: it must be >= 0" });
  t.throws(() => new SGD([p1], { nesterov: true }), { message: /^SGD: nesterov needs momentum > 0 and dampening 0/ });
  t.throws(() => new SGD([p1], { momentum: -0.5 }), { message: "SGD: invalid momentum -0.5: it must be >= 0" });
  t.throws(() => new SGD([{ params: [p1], weightDecay: -1 }]), {
    message: "SGD: param group 0: invalid weightDecay -1: it must be >= 0",
  });
  t.throws(() => new AdamW([p1, 3 as unknown as Tensor]), { message: "AdamW: params[1] is not a Tensor (got number)" });
  t.throws(() => new AdamW([]), { message: "AdamW: got an empty parameter list" });
  t.throws(() => new AdamW([p1], { learningRate: 0.1 } as never), {
    message: "AdamW: unknown option learningRate; it takes lr, betas, eps, weightDecay, amsgrad, maximize",
  });
  t.throws(() => new SGD([p1], { lr: "0.1" as unknown as number }), { message: 'SGD: option lr must be a number, got "0.1"' });
  t.throws(() => new SGD([p1, p1]), { message: /^SGD: the same parameter appears twice/ });
  t.throws(() => new SGD([p1.mul(2)]), { message: /^SGD: can't optimize parameter 0 \(param group 0, shape \[2, 3\]\): it is not a leaf/ });
});

test("addParamGroup adds parameters with the constructor's options as defaults", (t) => {
  const [p1, p2] = setup();
  const opt = new SGD([p1], { lr: 0.1, momentum: 0.9 });
  opt.addParamGroup({ params: [p2], lr: 0.01 });
  t.is(opt.paramGroups.length, 2);
  t.is(opt.paramGroups[1].lr, 0.01);
  t.is(opt.paramGroups[1].momentum, 0.9);
  t.throws(() => opt.addParamGroup({ params: [p1] }), { message: /^SGD: the same parameter appears twice/ });
  t.is(opt.paramGroups.length, 2);
});

/*
 *   p1, p2 = setup(); loss(p1, p2).backward()
 *   total = torch.nn.utils.clip_grad_norm_([p1, p2], max_norm, norm_type)
 *   print(total.item(), p1.grad.flatten().tolist(), p2.grad.tolist())
 */
test("clipGradNorm returns the total 2-norm and scales grads as torch", (t) => {
  // max_norm=0.5, norm_type=2.0
  const [p1, p2] = setup();
  backward(p1, p2);
  const total = clipGradNorm([p1, p2], 0.5);
  t.true(Math.abs(total - 1.7972201108932495) < 1e-6);
  assertClose(
    t,
    values(p1.grad as Tensor),
    [0.027820730581879616, -0.05564146116375923, 0.083462193608284, 0.11128292232751846, -0.13910365104675293, 0.166924387216568],
    1e-7,
  );
  assertClose(t, values(p2.grad as Tensor), [0.166924387216568, -0.3894902169704437], 1e-7);
});

test("clipGradNorm with the inf norm uses the largest magnitude", (t) => {
  // max_norm=0.1, norm_type=float("inf")
  const [p1, p2] = setup();
  backward(p1, p2);
  t.true(Math.abs(clipGradNorm([p1, p2], 0.1, Infinity) - 1.399999976158142) < 1e-6);
  assertClose(
    t,
    values(p1.grad as Tensor),
    [0.007142852991819382, -0.014285705983638763, 0.021428558975458145, 0.028571411967277527, -0.03571426495909691, 0.04285711795091629],
    1e-8,
  );
  assertClose(t, values(p2.grad as Tensor), [0.04285711795091629, -0.09999994188547134], 1e-8);
});

test("clipGradNorm below maxNorm returns the norm and leaves grads as they were", (t) => {
  // max_norm=100.0, norm_type=1.0 → 4.099999904632568, grads unchanged
  const [p1, p2] = setup();
  backward(p1, p2);
  t.true(Math.abs(clipGradNorm([p1, p2], 100, 1) - 4.099999904632568) < 1e-6);
  assertClose(t, values(p2.grad as Tensor), [0.6000000238418579, -1.399999976158142], 1e-7);
  t.is(clipGradNorm(tensor([1, 2], { dtype: "float32" }), 1), 0);
  t.throws(() => clipGradNorm([p1, "x" as never], 1), { message: "clipGradNorm: params[1] is not a Tensor (got string)" });
});

test("clipGradNorm with errorIfNonfinite throws on an infinite norm", (t) => {
  const [p1] = setup();
  p1.mul(Infinity).sum().backward();
  t.throws(() => clipGradNorm([p1], 1, 2, true), { message: /^clipGradNorm: the total norm of order 2 of the gradients is inf/ });
  t.is(clipGradNorm([p1], 1, 2), Infinity);
});

test("clipGradValue clamps every gradient element as torch", (t) => {
  // torch.nn.utils.clip_grad_value_([p1, p2], 0.35)
  const [p1, p2] = setup();
  backward(p1, p2);
  clipGradValue([p1, p2], 0.35);
  assertClose(t, values(p1.grad as Tensor), [0.1, -0.2, 0.3, 0.35, -0.35, 0.35], 1e-7);
  assertClose(t, values(p2.grad as Tensor), [0.35, -0.35], 1e-7);
});

/** getLastLr()[0] after construction and after each of `steps` steps; checks the optimizer's lr too. */
function lrSequence(
  t: ExecutionContext,
  make: (opt: optim.SGD) => optim.lrScheduler.LRScheduler,
  steps: number,
  lr = 0.1,
): number[] {
  const [p1] = setup();
  const opt = new SGD([p1], { lr });
  const scheduler = make(opt);
  const lrs = [scheduler.getLastLr()[0]];
  for (let i = 0; i < steps; i++) {
    opt.step();
    scheduler.step();
    lrs.push(scheduler.getLastLr()[0]);
    t.is(opt.paramGroups[0].lr, lrs[lrs.length - 1]);
  }
  return lrs;
}

function assertSequence(t: ExecutionContext, actual: number[], expected: number[]): void {
  assertClose(t, actual, expected, 1e-12);
}

test("getLinearScheduleWithWarmup follows transformers' formula", (t) => {
  // lr * step / warmup for step < 2, then lr * (6 - step) / (6 - 2), floored at 0
  const lrs = lrSequence(t, (opt) => lrScheduler.getLinearScheduleWithWarmup(opt, 2, 6), 8);
  assertSequence(t, lrs, [0, 0.05, 0.1, 0.075, 0.05, 0.025, 0, 0, 0]);
});

test("getCosineScheduleWithWarmup follows transformers' formula", (t) => {
  // warmup as above, then lr * 0.5 * (1 + cos(pi * 2 * 0.5 * (step - 2) / 4))
  const lrs = lrSequence(t, (opt) => lrScheduler.getCosineScheduleWithWarmup(opt, 2, 6), 7);
  const half = 0.5 * Math.SQRT1_2;
  assertSequence(t, lrs, [0, 0.05, 0.1, 0.1 * (0.5 + half), 0.05, 0.1 * (0.5 - half), 0, 0.1 * (0.5 - half)]);
});

test("getConstantScheduleWithWarmup warms up then stays", (t) => {
  const lrs = lrSequence(t, (opt) => lrScheduler.getConstantScheduleWithWarmup(opt, 4), 6, 0.2);
  assertSequence(t, lrs, [0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2]);
});

test("StepLR gives torch's learning rates", (t) => {
  // opt = torch.optim.SGD([p], lr=0.1); s = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
  // lrs = [s.get_last_lr()[0]] + [(opt.step(), s.step(), s.get_last_lr()[0])[2] for _ in range(6)]
  const lrs = lrSequence(t, (opt) => new lrScheduler.StepLR(opt, { stepSize: 2 }), 6);
  t.deepEqual(lrs, [0.1, 0.1, 0.010000000000000002, 0.010000000000000002, 0.0010000000000000002, 0.0010000000000000002, 0.00010000000000000003]);
  t.throws(() => lrSequence(t, (opt) => new lrScheduler.StepLR(opt, { stepSize: 0 }), 1), {
    message: "StepLR: stepSize must be a positive integer, got 0",
  });
});

test("LambdaLR takes one lambda per param group", (t) => {
  const [p1, p2] = setup();
  const opt = new SGD([{ params: [p1], lr: 1 }, { params: [p2], lr: 0.5 }]);
  const scheduler = new lrScheduler.LambdaLR(opt, [(s) => 1 / (s + 1), (s) => 0.5 ** s]);
  t.deepEqual(scheduler.getLastLr(), [1, 0.5]);
  scheduler.step();
  scheduler.step();
  t.deepEqual(scheduler.getLastLr(), [1 / 3, 0.125]);
  t.deepEqual([opt.paramGroups[0].lr, opt.paramGroups[1].lr], [1 / 3, 0.125]);
  t.throws(() => new lrScheduler.LambdaLR(opt, [() => 1]), {
    message: "LambdaLR: expected 2 lrLambdas (one per param group), got 1",
  });
});

test("scheduler and optimizer state dicts resume a schedule exactly", (t) => {
  const make = () => {
    const [p1] = setup();
    const opt = new AdamW([p1], { lr: 0.1 });
    return { opt, scheduler: lrScheduler.getCosineScheduleWithWarmup(opt, 3, 10) };
  };
  const run = make();
  for (let i = 0; i < 4; i++) run.scheduler.step();
  const saved = JSON.parse(JSON.stringify(run.scheduler.stateDict()));
  t.deepEqual(Object.keys(saved).sort(), ["baseLrs", "lastEpoch", "lastLr", "stepCount"]);

  const resumed = make();
  resumed.opt.loadStateDict(run.opt.stateDict());
  resumed.scheduler.loadStateDict(saved);
  t.deepEqual(resumed.scheduler.getLastLr(), run.scheduler.getLastLr());
  for (let i = 0; i < 3; i++) {
    run.scheduler.step();
    resumed.scheduler.step();
    t.is(resumed.opt.paramGroups[0].lr, run.opt.paramGroups[0].lr);
  }
  t.throws(() => resumed.scheduler.loadStateDict({ ...saved, baseLrs: [0.1, 0.2] }), {
    message: "LambdaLR.loadStateDict: baseLrs must be an array of 1 numbers (one per param group), got [0.1,0.2]",
  });
});
