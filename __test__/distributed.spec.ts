// Multi-process behaviour on 2 CPU processes over loopback: every collective,
// fail-fast shape mismatches, and data-parallel training equal to one process.
import test from "ava";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lastJson, runRanks, worstDifferences } from "./helpers/ranks.js";

const parse = lastJson;

test("collectives on 2 processes", async (t) => {
  const ranks = await runRanks("../fixtures/dist/collectives.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [a, b] = ranks.map((r) => parse(r.stdout));
  for (const out of [a, b]) {
    t.is(out.world, 2);
    t.deepEqual(out.gather, [1, 10, 2, 20]);
    t.deepEqual(out.gatherScalar, [0, 1]);
    t.deepEqual(out.gatherNested, [4]);
    t.deepEqual(out.sum, [3, 30]);
    t.deepEqual(out.mean, [1.5, 15]);
    t.deepEqual(out.max, [2, 20]);
    t.deepEqual(out.min, [1, 10]);
    t.deepEqual(out.broadcast, [1, 1]);
    t.deepEqual(out.objects, [{ rank: 0, name: "p0" }, { rank: 1, name: "p1" }]);
    t.deepEqual(out.fromMain, { config: "main" });
    t.regex(out.mismatch, /^gather: tensors differ across processes \(rank 0 \[2\], rank 1 \[3\]\)/);
  }
  t.deepEqual(a.padded, [0, -1]);
  t.deepEqual(b.padded, [0, 1]);
  t.deepEqual(a.paddedFirst, [-1, 0]);
  t.deepEqual(a.split, ["A", "B"]);
  t.deepEqual(b.split, ["C"]);
  t.deepEqual(b.splitPadded, ["C", "C"]);
});

test("a rank starting later than the timeout still joins; a collective that times out names the rank that never reached it (3 processes, rank 2 stalled)", async (t) => {
  const ranks = await runRanks("../fixtures/dist/stall.ts", 3);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  for (const r of ranks.slice(0, 2)) {
    const out = parse(r.stdout);
    // A rank may see its peer give up first (the peer's timeout closes the connection).
    t.regex(out.error, /([Tt]imed out|[Cc]onnection closed)[\s\S]*; rank 2 did not reach this collective \(#\d+ on every rank\) within 2\.0 s of this rank's timeout/, out.error);
    t.true(out.ms < 8000, `the Error came after ${out.ms} ms`);
  }
});

test("a call made on one process only (saveState under isMainProcess) times out naming both processes' collectives", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-mismatch-"));
  const ranks = await runRanks("../fixtures/dist/mismatch.ts", 2, [join(dir, "ckpt")]);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [saving, training] = ranks.map((r) => parse(r.stdout).error as string);
  const hint = /: the processes are not making the same calls in the same order \(is a call that every process must make, such as saveState, saveModel or gather, made on some processes only\?\)$/;
  // saveState's first collective shares its objects across processes (an all-gather).
  t.regex(saving, /^\w+: [\s\S]*; rank 1 waits in ALLREDUCE where this rank waits in (?!ALLREDUCE)[A-Z]+ \(collective #\d+\)/, saving);
  t.regex(training, /^backward: [\s\S]*; rank 0 waits in (?!ALLREDUCE)[A-Z]+ where this rank waits in ALLREDUCE \(collective #\d+\)/, training);
  for (const error of [saving, training]) t.regex(error, hint);
});

test("2 processes with batch 8 train to the same parameters as 1 process with batch 16", async (t) => {
  const [two, one] = [await runRanks("../fixtures/dist/train-mlp.ts", 2, ["8", "5"]), await runRanks("../fixtures/dist/train-mlp.ts", 1, ["16", "5"])];
  for (const r of [...two, ...one]) t.is(r.code, 0, r.stderr);
  const [a, b] = two.map((r) => parse(r.stdout));
  const single = parse(one[0].stdout);
  t.deepEqual(a.params, b.params, "both processes hold identical parameters");
  for (const [name, worst] of worstDifferences(single.params, a.params)) {
    t.true(worst < 1e-5, `${name} differs by ${worst}`);
  }
  single.losses.forEach((l: number, i: number) => t.true(Math.abs(l - a.losses[i]) < 1e-5, `loss ${i}`));
});

test("loss.backward() instead of accelerator.backward(loss) on 2 processes: the step throws, naming the fix", async (t) => {
  const ranks = await runRanks("../fixtures/dist/plain-backward.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  for (const r of ranks) {
    t.is(
      parse(r.stdout).error,
      "step: the gradients come from loss.backward(), which does not average them across the 2 processes; call accelerator.backward(loss) instead",
    );
  }
});

test("gradient accumulation on 2 processes matches one big batch", async (t) => {
  // 2 processes × batch 4 × 2 accumulation steps = 1 process × batch 16 per optimizer step.
  const [two, one] = [await runRanks("../fixtures/dist/train-mlp.ts", 2, ["4", "6", "2"]), await runRanks("../fixtures/dist/train-mlp.ts", 1, ["16", "3"])];
  for (const r of [...two, ...one]) t.is(r.code, 0, r.stderr);
  const a = parse(two[0].stdout);
  const single = parse(one[0].stdout);
  for (const [name, worst] of worstDifferences(single.params, a.params)) {
    t.true(worst < 1e-5, `${name} differs by ${worst}`);
  }
});

test("gatherForMetrics returns exactly the 37 samples; shards follow BatchSamplerShard", async (t) => {
  const ranks = await runRanks("../fixtures/dist/metrics.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [a, b] = ranks.map((r) => parse(r.stdout));
  t.deepEqual(a.predictions, Array.from({ length: 37 }, (_, i) => i));
  t.deepEqual(b.predictions, a.predictions);
  t.deepEqual(a.batches, [[0, 1, 2], [6, 7, 8], [12, 13, 14], [18, 19, 20]]);
  t.deepEqual(b.batches, [[3, 4, 5], [9, 10, 11], [15, 16, 17], [21, 0, 1]]);
  const uneven = await runRanks("../fixtures/dist/metrics.ts", 2, ["uneven"]);
  const [c, d] = uneven.map((r) => parse(r.stdout));
  t.deepEqual(c.batches, [[0, 1, 2], [6, 7, 8], [12, 13, 14], [18, 19, 20]]);
  t.deepEqual(d.batches, [[3, 4, 5], [9, 10, 11], [15, 16, 17], [21]]);
});

test("4 processes with batch 4 train to the same parameters as 1 process with batch 16", async (t) => {
  const four = await runRanks("../fixtures/dist/train-mlp.ts", 4, ["4", "5"], 120_000);
  const one = await runRanks("../fixtures/dist/train-mlp.ts", 1, ["16", "5"]);
  for (const r of [...four, ...one]) t.is(r.code, 0, r.stderr);
  const outs = four.map((r) => parse(r.stdout));
  const single = parse(one[0].stdout);
  for (const out of outs.slice(1)) t.deepEqual(out.params, outs[0].params, "every process holds identical parameters");
  for (const [name, worst] of worstDifferences(single.params, outs[0].params)) {
    t.true(worst < 1e-5, `${name} differs by ${worst}`);
  }
});

test("saveState on 2 processes writes one checkpoint with each process's RNG state", async (t) => {
  const { mkdtempSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = join(mkdtempSync(join(tmpdir(), "acc-dist-ckpt-")), "ckpt");
  const ranks = await runRanks("../fixtures/dist/checkpoint.ts", 2, [dir]);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [a, b] = ranks.map((r) => parse(r.stdout));
  t.deepEqual(a.files, ["accelerator_state.json", "model.safetensors", "random_states_0.safetensors", "random_states_1.safetensors"]);
  t.true(a.same && b.same, "each process resumes its own random stream");
  t.deepEqual(a.weight, b.weight);
});

test("the rendezvous store of a single-machine run listens on 127.0.0.1 only, read from /proc/net/tcp during the run", async (t) => {
  const ranks = await runRanks("../fixtures/dist/listening.ts", 2);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const main = ranks.map((r) => parse(r.stdout)).find((out) => out.rank === 0);
  // /proc/net/tcp writes IPv4 addresses as little-endian hex: 127.0.0.1 is 0100007F.
  t.deepEqual(main.listening, ["tcp 0100007F"], "one IPv4 loopback socket, no 0.0.0.0 or [::]");
});
