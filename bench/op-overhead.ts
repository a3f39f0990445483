// The `op` workload: microseconds per 1-element `add` from TypeScript, on the CPU
// (and CUDA when present), beside PyTorch-from-Python on the same libtorch, in one run.
// Prints one JSON line.  node --import @oxc-node/core/register bench/op-overhead.ts [--reference op_overhead.py] [--python python3]
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

const ours: Record<string, number | string> = {
  system: "accelerate-ts",
  cpu_add_us: perOpMicros("cpu", true),
  cpu_add_gc_us: perOpMicros("cpu", false),
};
if (native.cudaIsAvailable()) {
  ours.cuda_add_us = perOpMicros("cuda", true);
}
let reference: unknown = null;
if (existsSync(values.reference)) {
  const run = spawnSync(referencePython(), [values.reference], { encoding: "utf8" });
  reference = run.status === 0 ? JSON.parse(run.stdout.trim().split("\n").pop() ?? "null") : { error: run.stderr.slice(-500) };
}
console.log(JSON.stringify({ workload: "op", n, libtorch: libtorch.dir, ours, reference }));
