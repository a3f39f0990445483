// examples/gpt.ts under `accelerate launch` on 2 CPU processes at a small size:
// it trains, evaluates, logs to jsonl and TensorBoard, checkpoints, and a resumed
// run continues exactly where an uninterrupted one goes.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

function launch(dir: string, ...args: string[]) {
  const run = spawnSync(
    process.execPath,
    [join(root, "ts", "cli", "bin.mjs"), "launch", "--cpu", "--num_processes", "2", "--main_process_port", "0", join(root, "examples", "gpt.ts"), dir, ...args],
    { cwd: root, encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: "1", NO_COLOR: "1" }, timeout: 180_000 },
  );
  if (run.status !== 0) throw new Error(`gpt.ts ${args.join(" ")} failed: ${run.stderr}\n${run.stdout}`);
  return run.stdout;
}

const metrics = (dir: string) =>
  readFileSync(join(dir, "gpt", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, number>);

test("examples/gpt.ts trains on 2 processes, logs, checkpoints, and resumes to the same losses as an uninterrupted run", (t) => {
  const straight = mkdtempSync(join(tmpdir(), "acc-gpt-a-"));
  const out = launch(straight, "--epochs", "3");
  const evals = [...out.matchAll(/eval loss ([\d.]+) \((\d+) windows\)/g)];
  t.is(evals.length, 3, out);
  t.true(evals.every((m) => m[2] === "29"), "every evaluation window counted once");
  t.true(Number(evals[2][1]) < Number(evals[0][1]), out);
  t.regex(out, /\[rank 0\] sample: "MENENIUS:\\n/);
  t.is(readdirSync(join(straight, "gpt")).filter((f) => f.startsWith("events.out.tfevents.")).length, 1);
  t.deepEqual(readdirSync(join(straight, "checkpoints")).sort(), ["checkpoint_1", "checkpoint_2"], "totalLimit 2 keeps the newest two");

  const resumed = mkdtempSync(join(tmpdir(), "acc-gpt-b-"));
  launch(resumed, "--epochs", "2");
  const second = launch(resumed, "--epochs", "3", "--resume");
  t.regex(second, /resumed after epoch 2/);
  const a = metrics(straight);
  const b = metrics(resumed);
  t.deepEqual(b.map((m) => [m.step, m["train/loss"], m["eval/loss"]]), a.map((m) => [m.step, m["train/loss"], m["eval/loss"]]));
});
