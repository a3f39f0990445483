// ZeRO stages 2 and 3 where plain loops go off the straight path, on 2 CPU processes, against
// plain data parallelism: two optimizers on one model, loss.backward() before a step, a
// Sequential's layers called one by one, weights loaded after prepare, a sharded parameter read
// outside forward (an Error, never a crash), a parameter in two prepared models, freeMemory.
import test from "ava";
import { lastJson, runRanks } from "./helpers/ranks.js";

type Out = {
  twoOptimizers: Record<string, number>;
  plainBackward: string;
  iterated: number;
  loaded: Record<string, number>;
  read: string;
  shared: string;
  afterFree: string;
};
const run = async (stage: number): Promise<Out> => {
  const ranks = await runRanks("../fixtures/dist/zero3-edges.ts", 2, [String(stage)], 120_000);
  for (const r of ranks) if (r.code !== 0) throw new Error(`rank ${r.rank} exited ${r.code}: ${r.stderr}`);
  const [a, b] = ranks.map((r) => lastJson(r.stdout) as Out);
  if (JSON.stringify(a.twoOptimizers) !== JSON.stringify(b.twoOptimizers)) throw new Error("the processes disagree");
  return a;
};

test.serial("stages 2 and 3 off the straight path agree with data parallelism, and fail with Errors where they must", async (t) => {
  const ddp = await run(0);
  t.regex(ddp.plainBackward, /call accelerator\.backward\(loss\) instead/, "data parallelism refuses loss.backward()");
  for (const stage of [2, 3]) {
    const out = await run(stage);
    for (const [name, sum] of Object.entries(ddp.twoOptimizers)) {
      t.true(Math.abs(out.twoOptimizers[name] - sum) < 1e-4, `stage ${stage}, two optimizers and clipping one: ${name} ${out.twoOptimizers[name]} vs ${sum}`);
    }
    t.true(Math.abs(out.iterated - ddp.iterated) < 1e-3, `stage ${stage}: a Sequential's layers one by one: ${out.iterated} vs ${ddp.iterated}`);
    t.is(out.plainBackward, "no error", `stage ${stage} reduces in its hooks, so loss.backward() twice then a step works`);
    t.deepEqual(out.loaded, ddp.loaded, `stage ${stage}: loadStateDict after prepare reaches the shards`);
    t.is(out.afterFree, "no error", `stage ${stage}: after freeMemory the model is whole`);
    if (stage === 3) {
      t.regex(out.read, /^sum: this parameter is sharded by ZeRO stage 3/);
      t.regex(out.shared, /sharded by ZeRO stage 3|also belongs to a model prepared before/);
    } else {
      t.is(out.read, "no error");
      t.regex(out.shared, /parameter "0\.weight" also belongs to a model prepared before \(as "body\.weight"\)/);
    }
  }
});

test("ZeRO-3: saveModel on the main process alone is an Error on every process naming where the others are, not a crash", async (t) => {
  const ranks = await runRanks("../fixtures/dist/zero3-main-only.ts", 2, [], 120_000);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [main, other] = ranks.map((r) => lastJson(r.stdout) as { rank: number; errors: string[] });
  t.regex(main.errors[0], /^saveModel \(ZeRO stage 3\): every process must call it at the same point, since it gathers parameters with the others; process 1 is in endTraining$/);
  t.regex(other.errors[0], /^endTraining \(ZeRO stage 3\): every process must call it at the same point.*; process 0 is in saveModel$/);
});
