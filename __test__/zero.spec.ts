// ZeRO stages 1 and 2 on 2 CPU processes (gloo): the same training as plain data
// parallelism, half the optimizer state (and, stage 2, half the gradients) per process,
// clipping by the global norm, and checkpoints that resume on 2 and on 1 process.
import test from "ava";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Accelerator } from "../ts/index.js";
import { zeroStageOf } from "../ts/strategy/index.js";
import { lastJson, runRanks, worstDifferences } from "./helpers/ranks.js";

const FIXTURE = "../fixtures/dist/zero.ts";
type Out = { params: Record<string, number[]>; losses: number[]; bytes: { parameters: number; gradients: number; optimizerState: number } };
const run = async (processes: number, args: (string | number)[]): Promise<Out[]> => {
  const ranks = await runRanks(FIXTURE, processes, args.map(String), 120_000);
  for (const r of ranks) if (r.code !== 0) throw new Error(`rank ${r.rank} exited ${r.code}: ${r.stderr}`);
  return ranks.map((r) => lastJson(r.stdout) as Out);
};

const closeTo = (t: import("ava").ExecutionContext, a: Out, b: Out, what: string) => {
  for (const [name, worst] of worstDifferences(a.params, b.params)) t.true(worst < 1e-5, `${what}: ${name} differs by ${worst}`);
  a.losses.forEach((l, i) => t.true(Math.abs(l - b.losses[i]) < 1e-5, `${what}: loss ${i}`));
};

for (const clip of [0, 0.05]) {
  test.serial(`stages 1 and 2 train exactly like data parallelism${clip ? ", with gradient clipping" : ""}`, async (t) => {
    const [ddp] = await run(2, [0, 8, 5, clip]);
    for (const stage of [1, 2]) {
      const [a, b] = await run(2, [stage, 8, 5, clip]);
      t.deepEqual(a.params, b.params, `stage ${stage}: both processes hold the same parameters`);
      closeTo(t, ddp, a, `stage ${stage}`);
    }
  });
}

test.serial("each process holds half the optimizer state (stage 1) and half the gradients too (stage 2)", async (t) => {
  const [ddp] = await run(2, [0, 8, 3, 0]);
  const [one] = await run(2, [1, 8, 3, 0]);
  const [two] = await run(2, [2, 8, 3, 0]);
  const params = ddp.bytes.parameters; // 8·16 + 16 + 16·4 + 4 = 212 floats
  t.is(params, 212 * 4);
  t.is(ddp.bytes.optimizerState, 2 * params + 4 * 4, "AdamW: two moments per parameter and a step count per tensor");
  // A partition is half the parameters (padded to an even count) with its moments and a master copy.
  const half = (212 / 2) * 4;
  t.is(one.bytes.optimizerState, 3 * half + 4, "stage 1: moments and master copy of one half");
  t.is(one.bytes.gradients, params, "stage 1 keeps whole gradients");
  // Stage 2 cuts each parameter in two: its shard is the master copy the update runs on.
  t.is(two.bytes.optimizerState, 2 * half + 4 * 4, "stage 2: moments of one half of each parameter, a step count per tensor");
  t.is(two.bytes.parameters, params + half, "stage 2: whole parameters and this process's shards");
  t.is(two.bytes.gradients, 0, "stage 2: after the step neither whole nor partition gradients remain");
});

test.serial("a ZeRO checkpoint saved on 2 processes resumes on 2 and on 1 process with the same next losses", async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), "acc-zero-")), "ckpt");
  const [full] = await run(2, [2, 8, 6, 0]);
  await run(2, [2, 8, 3, 0, dir]);
  const [onTwo] = await run(2, [2, 8, 3, 0, "-", dir]);
  full.losses.slice(3).forEach((l, i) => t.true(Math.abs(l - onTwo.losses[i]) < 1e-5, `2 processes: loss ${3 + i}`));
  const [onOne] = await run(1, [0, 16, 3, 0, "-", dir]);
  full.losses.slice(3).forEach((l, i) => t.true(Math.abs(l - onOne.losses[i]) < 1e-5, `1 process: loss ${3 + i} (${l} vs ${onOne.losses[i]})`));
});

test("ZeRO options: both dialects, the launcher's environment, and clear errors", (t) => {
  t.is(zeroStageOf({ deepspeedPlugin: { zeroStage: 1 } }), 1);
  t.is(zeroStageOf({ deepspeedPlugin: {} }), 2);
  t.is(zeroStageOf({ fsdpPlugin: { reshardAfterForward: false } }), 2);
  t.is(zeroStageOf({}, { ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "1" }), 1);
  t.is(zeroStageOf({}, {}), 0);
  t.is(zeroStageOf({ deepspeedPlugin: { zeroStage: 3 } }), 3);
  t.is(zeroStageOf({ fsdpPlugin: {} }), 3, "FSDP2's default, full shard, is stage 3");
  t.throws(() => zeroStageOf({ deepspeedPlugin: { zeroStage: 4 } }), { message: /zeroStage must be 0, 1, 2 or 3, got 4/ });
  t.throws(() => zeroStageOf({ deepspeedPlugin: {}, fsdpPlugin: {} }), { message: /not both/ });
  t.notThrows(() => new Accelerator({ cpu: true, deepspeedPlugin: { zeroStage: 2 } }), "one process: nothing to partition");
});
