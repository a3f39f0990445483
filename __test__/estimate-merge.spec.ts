// `accelerate estimate-memory` (the ZeRO paper's formulas, from a count or a saved model) and
// `accelerate merge-weights` (sharded weights or a saveState directory → one model.safetensors).
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Accelerator, nn, optim } from "../ts/index.js";
import { loadWeights, saveWeights } from "../ts/checkpoint.js";
import { estimateModelStateMemory, savedModelParameterCount } from "../ts/cli/memory-estimate.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const cli = (args: string[]) =>
  spawnSync(process.execPath, [join(root, "ts", "cli", "bin.mjs"), ...args], { cwd: root, encoding: "utf8", timeout: 120_000, env: { ...process.env, NO_COLOR: "1", OMP_NUM_THREADS: "1" } });

test("estimate-memory follows the ZeRO paper: (2+2+12)Ψ mixed, divided as each stage says", (t) => {
  const psi = 7.5e9;
  const rows = estimateModelStateMemory(psi, 64);
  const find = (n: number, stage: number, precision = "mixed", offload = false) =>
    rows.find((r) => r.processes === n && r.zeroStage === stage && r.precision === precision && r.offloadOptimizer === offload && !r.offloadParameters)!;
  // The paper's figure 1: 7.5B parameters on 64 GPUs: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB.
  t.is(find(64, 0).deviceBytes, 120e9);
  t.is(find(64, 1).deviceBytes, Math.ceil(4 * psi + (12 * psi) / 64));
  t.is(find(64, 2).deviceBytes, Math.ceil(2 * psi + (14 * psi) / 64));
  t.is(find(64, 3).deviceBytes, Math.ceil((16 * psi) / 64));
  t.is(find(1, 0, "fp32").deviceBytes, 16 * psi);
  t.deepEqual([find(2, 2, "mixed", true).deviceBytes, find(2, 2, "mixed", true).hostBytes], [2 * psi + psi, 6 * psi]);
  t.deepEqual([...new Set(rows.map((r) => r.processes))], [1, 2, 4, 8, 16, 32, 64]);
  const everything = rows.find((r) => r.processes === 64 && r.zeroStage === 3 && r.precision === "mixed" && r.offloadParameters)!;
  t.deepEqual([everything.deviceBytes, everything.hostBytes], [0, Math.ceil((16 * psi) / 64)], "stage 3 with parameters offloaded too");
});

test("estimate-memory prints JSON with --json, a table otherwise, and counts a saved model's parameters", (t) => {
  const json = cli(["estimate-memory", "--params", "1.6e9", "--num_processes", "2", "--json"]);
  t.is(json.status, 0, json.stderr);
  const parsed = JSON.parse(json.stdout) as { parameters: number; rows: { processes: number }[] };
  t.is(parsed.parameters, 1.6e9);
  t.is(parsed.rows.length, 2 * 2 * 8);
  const table = cli(["estimate-memory", "--params", "1.6e9", "--num_processes", "2"]);
  t.regex(table.stdout, /processes\s+precision\s+ZeRO\s+offload\s+device GiB\s+host GiB/);
  t.regex(table.stdout, /\n2\s+mixed\s+3\s+optimizer\+params\s+0\.00\s+/);
  const dir = mkdtempSync(join(tmpdir(), "estimate-"));
  const net = new nn.Sequential(new nn.Linear(8, 16), new nn.Linear(16, 4));
  saveWeights(net.stateDict(), dir, 300);
  t.true(existsSync(join(dir, "model.safetensors.index.json")), "sharded");
  t.is(savedModelParameterCount(dir, "test"), 8 * 16 + 16 + 16 * 4 + 4);
  const fromModel = cli(["estimate-memory", dir, "--json", "--num_processes", "1"]);
  t.is((JSON.parse(fromModel.stdout) as { parameters: number }).parameters, 212);
  t.not(cli(["estimate-memory"]).status, 0);
});

test("merge-weights turns sharded weights and a saveState directory into one model.safetensors", (t) => {
  const net = new nn.Sequential(new nn.Linear(8, 16), new nn.Linear(16, 4));
  const expected = Object.fromEntries(Object.entries(net.stateDict()).map(([k, v]) => [k, v.toArray()]));
  const sharded = mkdtempSync(join(tmpdir(), "merge-in-"));
  saveWeights(net.stateDict(), sharded, 300);
  const out = join(mkdtempSync(join(tmpdir(), "merge-out-")), "merged");
  const merged = cli(["merge-weights", sharded, out]);
  t.is(merged.status, 0, merged.stderr);
  t.deepEqual(readdirSync(out), ["model.safetensors"]);
  t.deepEqual(Object.fromEntries(Object.entries(loadWeights(out)).map(([k, v]) => [k, v.toArray()])), expected);
  const accelerator = new Accelerator({ cpu: true });
  const [model] = accelerator.prepare(net, new optim.AdamW(net.parameters()));
  const checkpoint = mkdtempSync(join(tmpdir(), "merge-ckpt-"));
  accelerator.saveState(checkpoint);
  const out2 = join(checkpoint, "..", `${checkpoint.split("/").pop()}-merged`);
  t.is(cli(["merge-weights", checkpoint, out2]).status, 0);
  t.deepEqual(Object.keys(loadWeights(out2)).sort(), Object.keys(model.stateDict()).sort());
  const missing = cli(["merge-weights", out2 + "-none", out2]);
  t.regex(missing.stderr + missing.stdout, /holds neither model.safetensors.index.json nor model.safetensors/);
});
