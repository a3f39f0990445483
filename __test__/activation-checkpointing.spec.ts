// Activation checkpointing: blocks with dropout, recomputed in backward, train to the same
// parameters as without (the dropout masks are drawn again from the same generator state),
// on 1 process and on 2 with data parallelism and ZeRO stage 3; loss.backward() is an Error.
import test from "ava";
import { Accelerator, nn, optim, randn, type Tensor } from "../ts/index.js";
import { lastJson, runRanks, worstDifferences } from "./helpers/ranks.js";

type Out = { picked: number; params: Record<string, number[]>; losses: number[] };
const run = async (processes: number, args: number[]): Promise<Out[]> => {
  const ranks = await runRanks("../fixtures/dist/checkpointed.ts", processes, args.map(String), 120_000);
  for (const r of ranks) if (r.code !== 0) throw new Error(`rank ${r.rank} exited ${r.code}: ${r.stderr}`);
  return ranks.map((r) => lastJson(r.stdout) as Out);
};

for (const [processes, stage] of [[1, 0], [2, 0], [2, 1], [2, 2], [2, 3]] as const) {
  test.serial(`${processes} process${processes > 1 ? "es" : ""}${stage ? `, ZeRO stage ${stage}` : ""}: checkpointed blocks train exactly as without`, async (t) => {
    const [plain] = await run(processes, [stage, 0, 4]);
    const [checkpointed] = await run(processes, [stage, 1, 4]);
    t.is(checkpointed.picked, 3);
    for (const [name, worst] of worstDifferences(plain.params, checkpointed.params)) t.true(worst < 1e-6, `${name} differs by ${worst}`);
    plain.losses.forEach((l, i) => t.true(Math.abs(l - checkpointed.losses[i]) < 1e-6, `loss ${i}: ${l} vs ${checkpointed.losses[i]}`));
  });
}

class Block extends nn.Module {
  fc = new nn.Linear(4, 4);
  forward(x: Tensor): Tensor {
    return this.fc.forward(x).relu();
  }
}
class Pair extends nn.Module {
  a = new Block();
  b = new Block();
  forward(x: Tensor): Tensor {
    return this.b.forward(this.a.forward(x));
  }
}

test("loss.backward() instead of accelerator.backward is an Error at the step; eval and noGrad forwards are untouched", (t) => {
  const acc = new Accelerator({ cpu: true });
  const net = new Pair();
  const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
  t.is(acc.enableActivationCheckpointing(model, (_m, name) => name === "a"), 1);
  model.forward(randn([2, 4])).sum().backward();
  t.throws(() => opt.step(), { message: /checkpointed modules \(enableActivationCheckpointing\) get their gradients in accelerator\.backward\(loss\)/ });
  acc.backward(model.forward(randn([2, 4])).sum());
  t.true(net.a.fc.weight.grad !== null, "the checkpointed block got its gradient");
  t.notThrows(() => opt.step());
  // In eval mode the block runs as usual: loss.backward() reaches it and the step is fine.
  model.eval();
  opt.zeroGrad();
  model.forward(randn([2, 4])).sum().backward();
  t.true(net.a.fc.weight.grad !== null);
  t.notThrows(() => opt.step());
  t.throws(() => acc.enableActivationCheckpointing({} as unknown as nn.Module, Block), { message: /model must be an nn\.Module/ });
});

test("a recomputed module's activations are freed once its gradients have moved on, not when the step ends", (t) => {
  // Without this, every checkpointed module's recomputed activations stayed alive through the
  // rest of backward: on a GPU the peak was as high as without checkpointing.
  class Recording extends nn.Module {
    fc = new nn.Linear(4, 4);
    made: Tensor[] = [];
    forward(x: Tensor): Tensor {
      const hidden = this.fc.forward(x);
      this.made.push(hidden);
      return hidden.relu();
    }
  }
  class Stack extends nn.Module {
    blocks = new nn.ModuleList(Array.from({ length: 4 }, () => new Recording()));
    outputs: Tensor[] = [];
    forward(x: Tensor): Tensor {
      for (const block of this.blocks) {
        x = block.forward(x);
        this.outputs.push(x);
      }
      return x;
    }
  }
  const acc = new Accelerator({ cpu: true });
  const net = new Stack();
  const [model] = acc.prepare(net);
  t.is(acc.enableActivationCheckpointing(model, Recording), 4);
  acc.backward(model.forward(randn([2, 4])).sum());
  for (const block of net.blocks) {
    t.is(block.made.length, 2, "one forward, one recomputation");
    t.true(block.fc.weight.grad !== null);
    t.true(block.made[1].isDisposed, "the recomputed activation is freed");
  }
  for (const output of net.outputs) t.is(output.grad, null, "the checkpointed output's gradient is dropped once carried through");
});

test("a picked module inside a checkpointed one is not checkpointed again, and both get their gradients", (t) => {
  class Outer extends nn.Module {
    inner = new Block();
    fc = new nn.Linear(4, 4);
    forward(x: Tensor): Tensor {
      return this.fc.forward(this.inner.forward(x)).relu();
    }
  }
  class Stack extends nn.Module {
    a = new Outer();
    b = new Outer();
    forward(x: Tensor): Tensor {
      return this.b.forward(this.a.forward(x));
    }
  }
  const acc = new Accelerator({ cpu: true });
  const net = new Stack();
  const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
  // Outer and Block both match: only the two Outers are checkpointed; a later call adds nothing.
  t.is(acc.enableActivationCheckpointing(model, (m) => m instanceof Outer || m instanceof Block), 2);
  t.is(acc.enableActivationCheckpointing(model, Block), 0);
  acc.backward(model.forward(randn([2, 4])).sum());
  for (const p of net.parameters()) t.true(p.grad !== null, "every parameter has its gradient");
  t.notThrows(() => opt.step());
});
