// Seeded fuzzing of config files and CLI flags: each case is a child `accelerate` process
// (launch, env, config default) given a generated bad config file (YAML or JSON: wrong
// types, unknown keys, huge numbers, NaN, nested junk, broken syntax) or a bad flag. None
// may abort or hang; each failure must name the key, flag or file. FUZZ_CLI_CASES (default
// 12) and FUZZ_SEED (default 14) scale it.
import test from "ava";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { rng } from "./helpers/rng.js";

const CASES = Number(process.env.FUZZ_CLI_CASES ?? 12);
const SEED = Number(process.env.FUZZ_SEED ?? 14);
const root = fileURLToPath(new URL("..", import.meta.url));
const bin = join(root, "ts", "cli", "bin.mjs");
const script = join(root, "__test__", "fixtures", "cli", "print-env.ts");
const HANG_MS = 20_000;


const KEYS = [
  "num_processes", "num_machines", "machine_rank", "mixed_precision", "use_cpu", "main_process_port", "main_process_ip",
  "gpu_ids", "gradient_accumulation_steps", "distributed_type", "compute_environment", "debug", "rdzv_backend", "deepspeed_config", "fsdp_config",
];
const FLAGS = [
  "num_processes", "num_machines", "machine_rank", "main_process_port", "mixed_precision", "gradient_accumulation_steps", "gpu_ids", "zero_stage", "main_process_ip",
  "offload_optimizer_device", "offload_param_device", "zero3_init_flag", "fsdp_offload_params", "fsdp_reshard_after_forward",
];
const BAD_VALUES: unknown[] = [
  "two", -1, 0, 1.5, 1e308, 2 ** 53 + 2, Number.NaN, Number.POSITIVE_INFINITY, "", null, true, [], [1, [2]], { a: { b: [null] } }, "fp8", "0,x", 65536, "__proto__",
];
const BAD_FLAG_VALUES = ["two", "-1", "0", "1.5", "1e308", "NaN", "Infinity", "", "fp8", "0,x", "65536", "9007199254740993", "--cpu", "x".repeat(300)];

interface Case { args: string[]; names: string[] }

function yamlValue(value: unknown): string {
  if (typeof value === "number" && Number.isNaN(value)) return ".nan";
  if (value === Number.POSITIVE_INFINITY) return ".inf";
  return JSON.stringify(value);
}

function makeCase(pick: () => number, dir: string, i: number): Case {
  const choose = <T>(list: readonly T[]): T => list[Math.floor(pick() * list.length)];
  const kind = Math.floor(pick() * 6);
  const command = choose(["launch", "env"] as const);
  const tail = command === "launch" ? [script] : [];
  if (kind <= 3) {
    const json = pick() < 0.5;
    const path = join(dir, `cfg-${i}.${json ? "json" : "yaml"}`);
    const key = kind === 3 ? choose(["num_procs", "mixed-precision", "constructor", "zzz"]) : choose(KEYS);
    const value = choose(BAD_VALUES);
    let text: string;
    if (kind === 2) text = json ? `{"${key}": ` : `${key}: [unclosed\n  - {`;
    else if (json) text = JSON.stringify({ [key]: value, ...(pick() < 0.3 ? { nested: { junk: [1, { x: null }] } } : {}) }).replace("null,", Number.isNaN(value) ? "NaN," : "null,");
    else text = `${key}: ${yamlValue(value)}\n${pick() < 0.3 ? "num_processes: 1\n" : ""}`;
    writeFileSync(path, text);
    return { args: [command, "--config_file", path, ...tail], names: [key, "nested", path] };
  }
  if (kind === 4) {
    const flag = choose(FLAGS);
    return { args: ["launch", `--${flag}`, choose(BAD_FLAG_VALUES), script], names: [`--${flag}`] };
  }
  const precision = choose(BAD_FLAG_VALUES);
  return { args: ["config", "default", "--config_file", join(dir, `new-${i}.yaml`), "--mixed_precision", precision], names: ["--mixed_precision", "mixed_precision"] };
}

function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; signal: string | null; stderr: string; hung: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], { env, cwd: root });
    let stderr = "";
    let hung = false;
    child.stderr.on("data", (d) => (stderr += d));
    child.stdout.resume();
    const timer = setTimeout(() => {
      hung = true;
      child.kill("SIGKILL");
    }, HANG_MS);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, hung });
    });
  });
}

test(`${CASES} seeded bad config files and CLI flags: no abort, no hang, every failure names its key, flag or file`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-fuzz-cli-"));
  const env = { ...process.env, HF_HOME: join(dir, "hf"), NO_COLOR: "1", OMP_NUM_THREADS: "1" };
  const pick = rng(SEED);
  const cases = Array.from({ length: CASES }, (_, i) => makeCase(pick, dir, i));
  const problems: string[] = [];
  let failures = 0;
  for (let i = 0; i < cases.length; i += 2) {
    const results = await Promise.all(cases.slice(i, i + 2).map((c) => run(c.args, env)));
    results.forEach((r, j) => {
      const c = cases[i + j];
      const what = `accelerate ${c.args.map((a) => a.slice(0, 60)).join(" ")}`;
      if (r.hung) problems.push(`${what}: no exit within ${HANG_MS} ms`);
      else if (r.signal !== null) problems.push(`${what}: killed by ${r.signal}: ${r.stderr.slice(-300)}`);
      else if (r.code !== 0) {
        failures++;
        if (!c.names.some((n) => r.stderr.includes(n))) problems.push(`${what}: exit ${r.code}, the message names none of ${c.names.join(", ")}: ${r.stderr.slice(-300)}`);
        if (/\n\s+at .+:\d+:\d+\)?\n/.test(r.stderr)) problems.push(`${what}: a stack trace instead of a message: ${r.stderr.slice(-300)}`);
      }
    });
  }
  t.log(JSON.stringify({ seed: SEED, cases: CASES, failures }));
  t.true(failures > 0, "some generated cases must fail, or the generator is broken");
  t.deepEqual(problems, []);
});
