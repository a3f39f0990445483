// ZeRO on 2 CPU processes (gloo), stage 3 and stages 1-2 with CPU offload: a small language
// model with nested modules and a tied head trains exactly as plain data parallelism does,
// each process holds half the parameters, gradients and optimizer state, clipping agrees,
// and checkpoints resume on 2 and on 1 process.
import test from "ava";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lastJson, runRanks, worstDifferences } from "./helpers/ranks.js";

const FIXTURE = "../fixtures/dist/zero3.ts";
type Bytes = { parameters: number; gradients: number; optimizerState: number };
type Out = { params: Record<string, number[]>; losses: number[]; skipped: boolean[]; bytes: Bytes & { device: Bytes; host: Bytes }; afterBackward: Bytes; count: number; prefetchHits: number };
const run = async (processes: number, args: (string | number)[]): Promise<Out[]> => {
  const ranks = await runRanks(FIXTURE, processes, args.map(String), 120_000);
  for (const r of ranks) if (r.code !== 0) throw new Error(`rank ${r.rank} exited ${r.code}: ${r.stderr}`);
  return ranks.map((r) => lastJson(r.stdout) as Out);
};

const closeTo = (t: import("ava").ExecutionContext, a: Out, b: Out, what: string) => {
  t.deepEqual(Object.keys(a.params), Object.keys(b.params), `${what}: the same state dict keys`);
  for (const [name, worst] of worstDifferences(a.params, b.params)) t.true(worst < 1e-5, `${what}: ${name} differs by ${worst}`);
  a.losses.forEach((l, i) => t.true(Math.abs(l - b.losses[i]) < 1e-5, `${what}: loss ${i} (${l} vs ${b.losses[i]})`));
};

for (const clip of [0, 0.05]) {
  test.serial(`stages 1-3, with and without offload, train exactly like data parallelism${clip ? ", with gradient clipping" : ""}`, async (t) => {
    const [ddp] = await run(2, [0, 8, 5, clip]);
    const runs = [[1, "optimizer"], [2, "optimizer"], [3, "none"], [3, "optimizer"], [3, "all"]] as const;
    for (const [stage, offload] of runs) {
      const [a, b] = await run(2, [stage, 8, 5, clip, offload]);
      t.deepEqual(a.params, b.params, `stage ${stage}, offload ${offload}: both processes hold the same parameters`);
      // After the first step, gathering a unit starts gathering the next ones in recorded order.
      if (stage === 3) t.true(a.prefetchHits >= 4 * 5, `offload ${offload}: ${a.prefetchHits} gathers found their unit prefetched`);
      closeTo(t, ddp, a, `stage ${stage}, offload ${offload}`);
    }
  });
}

test.serial("fp16 under stages 2 and 3: the same skipped steps (inf gradients) and parameters as data parallelism, with clipping", async (t) => {
  // A first loss scale of 2^19 overflows float16 twice before it has halved enough (2^18 did
  // when Linear weight gradients were rounded to float16 too; they are made in float32 now).
  const [ddp] = await run(2, [0, 8, 6, 0.05, "none", "-", "-", 19]);
  t.deepEqual(ddp.skipped, [true, true, false, false, false, false]);
  for (const [stage, offload] of [[2, "none"], [2, "optimizer"], [3, "none"], [3, "all"]] as const) {
    const [a] = await run(2, [stage, 8, 6, 0.05, offload, "-", "-", 19]);
    t.deepEqual(a.skipped, ddp.skipped, `stage ${stage}, offload ${offload}`);
    closeTo(t, ddp, a, `fp16, stage ${stage}, offload ${offload}`);
  }
});

test.serial("one process: stage 3 and optimizer offload (stages 2 and 3) train exactly like no ZeRO", async (t) => {
  const [plain] = await run(1, [0, 16, 4, 0.05]);
  for (const [stage, offload] of [[3, "none"], [3, "all"], [2, "optimizer"]] as const) {
    const [a] = await run(1, [stage, 16, 4, 0.05, offload]);
    closeTo(t, plain, a, `one process, stage ${stage}, offload ${offload}`);
  }
});

test.serial("stage 3: each process holds half the parameters, gradients and optimizer state", async (t) => {
  const [ddp] = await run(2, [0, 8, 2, 0]);
  const [a, b] = await run(2, [3, 8, 2, 0]);
  const full = ddp.count * 4;
  t.is(ddp.bytes.parameters, full);
  t.is(ddp.afterBackward.gradients, full, "data parallel: whole gradients after backward");
  // Parameters of fewer than 20 elements (the LayerNorms' and the output biases) stay whole
  // besides their shard; the others are cut in two, each half padded to a whole element.
  const sizes = Object.values(ddp.params).map((p) => p.length);
  const tensors = sizes.length;
  const persistent = sizes.filter((n) => n < 20).reduce((a, n) => a + n * 4, 0);
  t.true(persistent > 0);
  for (const r of [a, b]) {
    const parameters = r.bytes.parameters - persistent;
    t.true(parameters >= full / 2 && parameters <= full / 2 + tensors * 4, `parameters: ${r.bytes.parameters} of ${full}`);
    t.true(r.afterBackward.gradients >= full / 2 && r.afterBackward.gradients <= full / 2 + tensors * 4, `gradients after backward: ${r.afterBackward.gradients}`);
    t.is(r.bytes.gradients, 0, "after the step no gradients remain");
    // AdamW: two moments per shard and a step count per tensor.
    t.true(r.bytes.optimizerState <= ddp.bytes.optimizerState / 2 + tensors * 8, `optimizer state: ${r.bytes.optimizerState} of ${ddp.bytes.optimizerState}`);
    t.true(r.bytes.optimizerState >= (ddp.bytes.optimizerState - tensors * 4) / 2);
    t.deepEqual(r.bytes.device, { parameters: 0, gradients: 0, optimizerState: 0 }, "a CPU run holds everything on the host");
  }
});

test.serial("a stage 3 checkpoint saved on 2 processes resumes on 2 and on 1 process with the same next losses", async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), "acc-zero3-")), "ckpt");
  const [full] = await run(2, [3, 8, 6, 0]);
  await run(2, [3, 8, 3, 0, "none", dir]);
  const [onTwo] = await run(2, [3, 8, 3, 0, "none", "-", dir]);
  full.losses.slice(3).forEach((l, i) => t.true(Math.abs(l - onTwo.losses[i]) < 1e-5, `2 processes: loss ${3 + i} (${l} vs ${onTwo.losses[i]})`));
  const [onOne] = await run(1, [0, 16, 3, 0, "none", "-", dir]);
  full.losses.slice(3).forEach((l, i) => t.true(Math.abs(l - onOne.losses[i]) < 1e-5, `1 process: loss ${3 + i} (${l} vs ${onOne.losses[i]})`));
  const [offloaded] = await run(2, [3, 8, 3, 0, "all", "-", dir]);
  full.losses.slice(3).forEach((l, i) => t.true(Math.abs(l - offloaded.losses[i]) < 1e-5, `2 processes, offloaded: loss ${3 + i}`));
});
