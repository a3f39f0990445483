// CUDA behaviour (run on a GPU host with `npm run test:gpu`): device placement,
// memory statistics, and NCCL collectives and data-parallel training on 2 GPUs.
import test from "ava";
import { Accelerator, data, native, nn, ones, randn } from "../gpu-imports.js";
import { runRanks } from "../helpers/ranks.js";

const gpus = native.cudaDeviceCount();
const parse = (stdout: string) => JSON.parse(stdout.trim().split("\n").pop() ?? "{}");

test("the Accelerator places models and batches on cuda:<localRank>", (t) => {
  const acc = new Accelerator();
  t.is(acc.device, "cuda:0");
  const model = new nn.Linear(4, 2);
  const [m, loader] = acc.prepare(model, new data.DataLoader(new data.TensorDataset({ x: randn([10, 4]) }), { batchSize: 5 }));
  t.true(m.parameters().every((p) => p.device === "cuda:0"));
  for (const batch of loader) {
    t.is(batch.x.device, "cuda:0");
    t.is(m.forward(batch.x).device, "cuda:0");
  }
  t.true(new Accelerator({ cpu: true }).device === "cpu");
});

test("memory() reports the caching allocator's bytes", (t) => {
  const acc = new Accelerator();
  acc.resetPeakMemory();
  const big = ones([1024, 1024], { device: "cuda:0" }); // 4 MiB
  const stats = acc.memory();
  t.true(stats.allocated >= 4 * 2 ** 20);
  t.true(stats.reserved >= stats.allocated);
  t.true(stats.peak >= stats.allocated);
  big.dispose();
  acc.freeMemory();
  t.true(acc.memory().reserved <= stats.reserved);
});

test("NCCL collectives on 2 GPUs", async (t) => {
  if (gpus < 2) return t.pass("needs 2 GPUs");
  process.env.FIXTURE_GPU = "1";
  const ranks = await runRanks("../fixtures/dist/collectives.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  for (const out of ranks.map((r) => parse(r.stdout))) {
    t.deepEqual(out.gather, [1, 10, 2, 20]);
    t.deepEqual(out.sum, [3, 30]);
    t.deepEqual(out.mean, [1.5, 15]);
    t.deepEqual(out.broadcast, [1, 1]);
    t.deepEqual(out.objects, [{ rank: 0, name: "p0" }, { rank: 1, name: "p1" }]);
    t.regex(out.mismatch, /^gather: tensors differ across processes/);
  }
});

test("data-parallel training on 2 GPUs matches one GPU with the global batch", async (t) => {
  if (gpus < 2) return t.pass("needs 2 GPUs");
  process.env.FIXTURE_GPU = "1";
  const two = await runRanks("../fixtures/dist/train-mlp.ts", 2, ["8", "5"]);
  const one = await runRanks("../fixtures/dist/train-mlp.ts", 1, ["16", "5"]);
  for (const r of [...two, ...one]) t.is(r.code, 0, r.stderr);
  const a = parse(two[0].stdout);
  const single = parse(one[0].stdout);
  for (const [name, values] of Object.entries(single.params as Record<string, number[]>)) {
    const worst = Math.max(...values.map((v, i) => Math.abs(v - a.params[name][i])));
    t.true(worst < 1e-4, `${name} differs by ${worst}`);
  }
});
