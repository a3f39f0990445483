// examples/zero.ts under `accelerate launch --use_deepspeed --zero_stage N` on 2 CPU
// processes: it trains, and each process holds half the optimizer state of plain data parallelism.
import test from "ava";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

type Held = { rank: number; parameters: number; gradients: number; optimizerState: number };
function launch(...flags: string[]): { strategy: string; accuracy: number; held: Held[] } {
  const run = spawnSync(
    process.execPath,
    [join(root, "ts", "cli", "bin.mjs"), "launch", "--cpu", "--num_processes", "2", "--main_process_port", "0", ...flags, join(root, "examples", "zero.ts")],
    { cwd: root, encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: "1", NO_COLOR: "1" }, timeout: 180_000 },
  );
  if (run.status !== 0) throw new Error(`zero.ts ${flags.join(" ")} failed: ${run.stderr}\n${run.stdout}`);
  const line = run.stdout.split("\n").find((l) => l.includes('{"strategy"')) ?? "";
  return JSON.parse(line.slice(line.indexOf("{")));
}

test("examples/zero.ts: stages 1 and 2 train as well as data parallelism with half the optimizer state per process", (t) => {
  const ddp = launch();
  const one = launch("--use_deepspeed", "--zero_stage", "1");
  const two = launch("--use_deepspeed", "--zero_stage", "2");
  t.deepEqual([ddp.strategy, one.strategy, two.strategy], ["ddp", "zero", "zero"]);
  for (const run of [ddp, one, two]) t.true(run.accuracy > 0.9, `accuracy ${run.accuracy}`);
  t.true(Math.abs(one.accuracy - ddp.accuracy) < 0.01 && Math.abs(two.accuracy - ddp.accuracy) < 0.01);
  const full = ddp.held[0].optimizerState;
  // Stage 1: moments and master copy of one half, 3/4 of plain. Stage 2: the moments of one half
  // (each parameter's shard is its master copy, counted with the parameters).
  for (const [run, share] of [[one, 0.75], [two, 0.5]] as const) {
    t.is(run.held.length, 2);
    for (const h of run.held) t.true(Math.abs(h.optimizerState / full - share) < 0.01, `rank ${h.rank}: ${h.optimizerState} vs ${full}`);
  }
  t.true(two.held.every((h) => h.gradients === 0), "stage 2 holds no whole gradients after the step");
  const r = spawnSync(process.execPath, [join(root, "ts", "cli", "bin.mjs"), "launch", "--cpu", "--num_processes", "2", "--zero_stage", "1", join(root, "examples", "zero.ts")], { cwd: root, encoding: "utf8" });
  t.regex(r.stderr, /--zero_stage needs --use_deepspeed/);
});
