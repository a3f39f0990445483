// accelerator.compileStep off a GPU: the step runs as it is (the same script works on the CPU),
// and bad options are an Error. Capture itself is tested on a GPU (__test__/gpu/compile-step.spec.ts).
import test from "ava";
import { Accelerator, nn, optim, randint, randn, type Tensor } from "../ts/index.js";

test("on the CPU a compiled step runs as it is and trains like the plain step", (t) => {
  const run = (compiled: boolean): number[] => {
    const acc = new Accelerator({ cpu: true, seed: 0 });
    const net = new nn.Linear(6, 3);
    const [model, opt] = acc.prepare(net, new optim.AdamW(net.parameters(), { lr: 0.1 }));
    const fn = (x: Tensor, y: Tensor): Tensor => {
      const loss = nn.functional.crossEntropy(model.forward(x), y);
      acc.backward(loss);
      opt.step();
      opt.zeroGrad();
      return loss;
    };
    const step = compiled ? acc.compileStep(fn) : fn;
    acc.setSeed(1);
    const losses = Array.from({ length: 5 }, () => step(randn([4, 6]), randint(0, 3, [4])).item());
    return [...losses, ...(net.weight.toArray() as number[][]).flat()];
  };
  t.deepEqual(run(true), run(false));
});

test("compileStep checks its arguments when called, on every device: a function, known options, a whole warmup of at least 1", (t) => {
  const acc = new Accelerator({ cpu: true });
  for (const warmup of [0, 1.5, -1, Number.NaN]) {
    t.throws(() => acc.compileStep(() => undefined, { warmup }), { message: /compileStep: warmup must be an integer of at least 1, got/ });
  }
  t.throws(() => acc.compileStep(() => undefined, { warmup: "2" as unknown as number }), { message: 'compileStep: warmup must be an integer of at least 1, got "2"' });
  t.throws(() => acc.compileStep(() => undefined, { warmpu: 3 } as never), { message: 'compileStep: unknown option "warmpu" (did you mean "warmup"?); the options are: warmup' });
  t.throws(() => acc.compileStep(42 as never), { message: /compileStep: fn must be a function \(the training step\), got/ });
  t.notThrows(() => acc.compileStep(() => undefined, { warmup: 1 }));
});
