// The `mlp` step in float32 and under bf16 autocast in one process, in alternating blocks of
// steps, so that the host's drift (the step is bound by the host on a GPU) hits both alike.
// Prints, per variant, the median over blocks of host µs per step in each phase and the wall
// time per step (the GPU waited for at each block's end). No data loader: one batch, reused.
//   node --import @oxc-node/core/register bench/mlp-precision.ts [--rounds 15] [--block 50] [--shape 784,2048,512]
import { parseArgs } from "node:util";
import { Accelerator, nn, noGrad, optim, randint, randn, type Tensor } from "../ts/index.js";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "15" },
    block: { type: "string", default: "50" },
    // input features, hidden width, batch
    shape: { type: "string", default: "784,2048,512" },
  },
});
const [rounds, block] = [values.rounds, values.block].map(Number);
const [features, width, batch] = values.shape.split(",").map(Number);
const accelerator = new Accelerator({ mixedPrecision: "bf16" });
const device = accelerator.device;
const net = new nn.Sequential(new nn.Linear(features, width), new nn.ReLU(), new nn.Linear(width, width), new nn.ReLU(), new nn.Linear(width, 10));
net.to(device);
const opt = new optim.AdamW(net.parameters(), { lr: 3e-4, weightDecay: 0.1 });
const x = randn([batch, features], { device });
const y = randint(0, 10, [batch], { device });
const now = () => Number(process.hrtime.bigint()) / 1e3;

type Phases = { forward: number; backward: number; step: number };
// bf16 through a prepared model (under autocast, float32 outputs) whose layers are `net`'s.
const [prepared] = accelerator.prepare(new nn.Sequential(...net.children()));
const forward = (bf16: boolean): Tensor => (bf16 ? prepared : net).forward(x);
const variants: Record<string, (bf16: boolean) => Phases> = {
  train: (bf16) => {
    const t0 = now();
    const loss = nn.functional.crossEntropy(forward(bf16), y);
    const t1 = now();
    loss.backward();
    const t2 = now();
    opt.step();
    opt.zeroGrad();
    const t3 = now();
    loss.dispose();
    return { forward: t1 - t0, backward: t2 - t1, step: t3 - t2 };
  },
  forward_no_grad: (bf16) => {
    const t0 = now();
    noGrad(() => forward(bf16)).dispose();
    return { forward: now() - t0, backward: 0, step: 0 };
  },
};

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
for (const [variant, run] of Object.entries(variants)) {
  const blocks: Record<"fp32" | "bf16", Record<keyof Phases | "wall", number[]>> = {
    fp32: { forward: [], backward: [], step: [], wall: [] },
    bf16: { forward: [], backward: [], step: [], wall: [] },
  };
  for (let round = 0; round <= rounds; round++) {
    for (const bf16 of [false, true]) {
      const sums: Phases = { forward: 0, backward: 0, step: 0 };
      const start = now();
      for (let i = 0; i < block; i++) {
        const t = run(bf16);
        sums.forward += t.forward;
        sums.backward += t.backward;
        sums.step += t.step;
      }
      accelerator.synchronize();
      if (round === 0) continue; // warm-up
      const into = blocks[bf16 ? "bf16" : "fp32"];
      for (const phase of ["forward", "backward", "step"] as const) into[phase].push(sums[phase] / block);
      into.wall.push((now() - start) / block);
    }
  }
  const us = Object.fromEntries(
    Object.entries(blocks).map(([mode, phases]) => [mode, Object.fromEntries(Object.entries(phases).map(([p, v]) => [p, Math.round(median(v))]))]),
  );
  console.log(JSON.stringify({ workload: "mlp", variant, device, rounds, block, us_per_step_median: us, bf16_vs_fp32: Math.round((1000 * us.fp32.wall) / us.bf16.wall) / 1000 }));
}
