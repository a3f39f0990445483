// The `op` workload: microseconds per 1-element `add` from TypeScript, on the CPU
// (and CUDA when present), beside PyTorch-from-Python on the same libtorch, in one run.
// Hosts are noisy, so both are measured `--rounds` times, alternating, and the medians
// are compared. Prints one JSON line.
//   node --import @oxc-node/core/register bench/op-overhead.ts [--reference op_overhead.py] [--python python3] [--rounds 5]
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ones, libtorch } from "../ts/index.js";
import { native } from "../ts/native.js";

const { values } = parseArgs({
  options: {
    reference: { type: "string", default: "../shared/bench/op_overhead.py" },
    python: { type: "string" },
    n: { type: "string", default: "200000" },
    rounds: { type: "string", default: "5" },
  },
});
const n = Number(values.n);

/** µs per `c = a.add(b)`, the result freed by `dispose()` (or, with `keep`, left to the GC). */
function perOpMicros(device: string, dispose: boolean): number {
  const a = ones([1], { device });
  const b = ones([1], { device });
  const sync = () => (device === "cpu" ? undefined : a.add(b).item());
  for (let i = 0; i < 1000; i++) a.add(b).dispose();
  sync();
  const start = process.hrtime.bigint();
  if (dispose) {
    for (let i = 0; i < n; i++) a.add(b).dispose();
  } else {
    for (let i = 0; i < n; i++) a.add(b);
  }
  sync();
  return Math.round((Number(process.hrtime.bigint() - start) / 1e3 / n) * 1000) / 1000;
}

function referencePython(): string {
  if (values.python) return values.python;
  const venvPython = join(libtorch.dir, "..", "..", "..", "..", "bin", "python");
  return existsSync(venvPython) ? venvPython : "python3";
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

function referenceRound(): Record<string, number | string> | { error: string } | null {
  if (!existsSync(values.reference)) return null;
  const run = spawnSync(referencePython(), [values.reference], { encoding: "utf8" });
  if (run.status !== 0) return { error: run.stderr.slice(-500) };
  return JSON.parse(run.stdout.trim().split("\n").pop() ?? "null");
}

const keys = ["cpu_add_us", "cpu_add_gc_us", ...(native.cudaIsAvailable() ? ["cuda_add_us"] : [])];
const oursRounds: Record<string, number>[] = [];
const referenceRounds: Record<string, number | string>[] = [];
let referenceError: unknown = null;
for (let round = 0; round < Number(values.rounds); round++) {
  oursRounds.push({
    cpu_add_us: perOpMicros("cpu", true),
    cpu_add_gc_us: perOpMicros("cpu", false),
    ...(keys.includes("cuda_add_us") ? { cuda_add_us: perOpMicros("cuda", true) } : {}),
  });
  const reference = referenceRound();
  if (reference && "error" in reference) referenceError = reference;
  else if (reference) referenceRounds.push(reference);
}
const medians = (rounds: Record<string, number | string>[], names: string[]) =>
  Object.fromEntries(names.filter((k) => rounds.some((r) => k in r)).map((k) => [k, median(rounds.map((r) => Number(r[k])))]));
const ours = { system: "accelerate-ts", ...medians(oursRounds, keys), rounds: oursRounds };
const reference =
  referenceRounds.length > 0
    ? { ...referenceRounds[0], ...medians(referenceRounds, ["cpu_add_us", "cuda_add_us"]), rounds: referenceRounds }
    : referenceError;
console.log(JSON.stringify({ workload: "op", n, libtorch: libtorch.dir, ours, reference }));
