// Seeded fuzzing of the public API in child processes (batches of FUZZ_BATCH calls), so
// that an abort is counted instead of ending the run: tensor ops, creation, nn, optim,
// data, Accelerator options and corrupted checkpoint files. FUZZ_CALLS (default 2000)
// and FUZZ_SEED (default 14) scale it; RELIABILITY.md records a longer run.
import test from "ava";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const CALLS = Number(process.env.FUZZ_CALLS ?? 2000);
const SEED = Number(process.env.FUZZ_SEED ?? 14);
const BATCH = Number(process.env.FUZZ_BATCH ?? 500);
const worker = fileURLToPath(new URL("./fixtures/fuzz/worker.ts", import.meta.url));

interface Summary { calls: number; ok: number; errors: number; unnamed: string[]; aliasing: string[] }

function runBatch(start: number, count: number): Promise<{ summary?: Summary; signal: string | null; code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "@oxc-node/core/register", worker, String(SEED), String(start), String(count)], {
      env: { ...process.env, OMP_NUM_THREADS: "1" },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code, signal) => {
      const line = stdout.trim().split("\n").pop() ?? "";
      let summary: Summary | undefined;
      try {
        summary = JSON.parse(line) as Summary;
      } catch {
        summary = undefined;
      }
      resolve({ summary, signal, code, stderr });
    });
  });
}

test(`${CALLS} seeded bad calls in child processes: no abort, no silent aliasing, every Error names its operation`, async (t) => {
  const starts = Array.from({ length: Math.ceil(CALLS / BATCH) }, (_, i) => i * BATCH);
  const results = [];
  for (let i = 0; i < starts.length; i += 2) {
    results.push(...(await Promise.all(starts.slice(i, i + 2).map((s) => runBatch(s, Math.min(BATCH, CALLS - s))))));
  }
  const aborts = results.filter((r) => r.summary === undefined);
  const calls = results.reduce((n, r) => n + (r.summary?.calls ?? 0), 0);
  // Each batch lists its first 20 unnamed Errors and counts the rest as "".
  const unnamed = results.flatMap((r) => r.summary?.unnamed ?? []);
  const aliasing = results.flatMap((r) => r.summary?.aliasing ?? []);
  t.log(JSON.stringify({ seed: SEED, calls, aborts: aborts.length, errors: results.reduce((n, r) => n + (r.summary?.errors ?? 0), 0), unnamed: unnamed.length }));
  t.deepEqual(aborts.map((a) => `${a.signal ?? a.code}: ${a.stderr.slice(-300)}`), [], "aborted batches");
  t.is(calls, CALLS);
  t.deepEqual(aliasing, []);
  t.deepEqual(unnamed, [], "Errors that do not start with their operation's name");
});
