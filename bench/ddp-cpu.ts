// Data-parallel scaling on the CPU: the `mlp` workload on 1 process and on 2
// processes (Gloo over loopback, started with `accelerate launch --cpu`), per-process
// batch 512 in both, in one command. Prints one JSON line with the scaling.
//   node --import @oxc-node/core/register bench/ddp-cpu.ts [--steps 30] [--warmup 5]
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { steps: { type: "string", default: "30" }, warmup: { type: "string", default: "5" } } });
const bin = fileURLToPath(new URL("../ts/cli/bin.mjs", import.meta.url));
const mlp = fileURLToPath(new URL("./mlp.ts", import.meta.url));

function run(processes: number): { samples_per_s: number; step_ms: number } {
  const args = ["launch", "--cpu", "--num_processes", String(processes), "--main_process_port", "0", mlp];
  const out = spawnSync(process.execPath, [bin, ...args, "--steps", values.steps, "--warmup", values.warmup, "--reference", "none"], {
    encoding: "utf8",
  });
  if (out.status !== 0) throw new Error(`ddp-cpu: ${processes} process(es) failed:\n${out.stderr}`);
  const line = out.stdout.trim().split("\n").filter((l) => l.includes('"ours"')).pop() ?? "";
  return JSON.parse(line.replace(/^\[rank 0\] /, "")).ours;
}

const one = run(1);
const two = run(2);
console.log(
  JSON.stringify({
    workload: "mlp", device: "cpu", batch_per_process: 512,
    one_process: one, two_processes: two,
    // Both runs use every core (one process with all threads, or one thread per process), so
    // the ratio of totals says what data parallelism costs here; 2 × one process is the GPU yardstick.
    total_vs_one_process: Math.round((two.samples_per_s / one.samples_per_s) * 1000) / 1000,
    scaling_vs_two_times_one: Math.round((two.samples_per_s / (2 * one.samples_per_s)) * 1000) / 1000,
  }),
);
