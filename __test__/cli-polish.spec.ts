// CLI manners: HF config keys we do not apply are listed once, the missing-config
// warning only for a surprising default, colours only on a terminal (NO_COLOR, FORCE_COLOR).
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { parseClusterConfig } from "../ts/cli/config-file.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = join(root, "ts", "cli", "bin.mjs");
const printTty = join(root, "__test__", "fixtures", "ux", "print-tty.ts");
const hasScript = spawnSync("script", ["--version"]).status === 0;

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const base: NodeJS.ProcessEnv = { ...process.env, HF_HOME: mkdtempSync(join(tmpdir(), "cli-hf-")), OMP_NUM_THREADS: "1", ...env };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete base[key];
  return spawnSync(process.execPath, [bin, ...args], { cwd: root, env: base, encoding: "utf8", timeout: 120_000 });
}

test("HF keys that accelerate-ts does not apply are collected when they ask for something", (t) => {
  const unused: string[] = [];
  const raw = YAML.parse("num_processes: 1\nipex_config:\n  ipex: true\ndynamo_backend: INDUCTOR\ndynamo_config: {}\ntpu_env: []\ntpu_use_cluster: false\nfsdp_config: {}\n");
  t.deepEqual(parseClusterConfig(raw, "hf.yaml", unused), { num_processes: 1 });
  t.deepEqual(unused, ["ipex_config", "dynamo_backend"]);
  const quiet: string[] = [];
  parseClusterConfig(YAML.parse("dynamo_backend: 'NO'\ndeepspeed_config:\n  zero_stage: null\n"), "hf.yaml", quiet);
  t.deepEqual(quiet, []);
});

test("launch lists unused keys once, and warns about a missing config only for a surprising default", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "cli-polish-"));
  const config = join(dir, "hf.yaml");
  writeFileSync(config, "use_cpu: true\nnum_processes: 1\nipex_config:\n  ipex: true\ndynamo_backend: INDUCTOR\n");
  const run = cli(["launch", "--config_file", config, printTty], { NO_COLOR: "1" });
  t.is(run.status, 0, run.stderr);
  const notices = run.stderr.split("\n").filter((l) => l.includes("not used by accelerate-ts"));
  t.is(notices.length, 1, run.stderr);
  t.true(notices[0].includes(`config file ${config}: not used by accelerate-ts: ipex_config, dynamo_backend`));
  const flagsSayAll = cli(["launch", "--cpu", "--num_processes", "1", printTty], { NO_COLOR: "1" });
  t.is(flagsSayAll.status, 0, flagsSayAll.stderr);
  t.false(/no config file/.test(flagsSayAll.stderr), flagsSayAll.stderr);
  const surprising = cli(["launch", "--cpu", printTty], { NO_COLOR: "1" });
  t.false(/no config file/.test(surprising.stderr), "with --cpu one process is no surprise");
});

test("launch tells ranks that output is not a terminal through a pipe", (t) => {
  const run = cli(["launch", "--cpu", "--num_processes", "1", printTty], { NO_COLOR: undefined, FORCE_COLOR: undefined });
  t.is(run.status, 0, run.stderr);
  const line = run.stdout.split("\n").find((l) => l.startsWith("TTY ")) ?? "";
  t.deepEqual(JSON.parse(line.slice(4)), { tty: "0", columns: null, noColor: null }, "the CLI's own NO_COLOR is not passed on");
});

test("--help: no escape codes into a pipe or with NO_COLOR; colours with FORCE_COLOR", (t) => {
  const piped = cli(["--help"], { NO_COLOR: undefined, FORCE_COLOR: undefined, CI: "1" });
  t.is(piped.status, 0);
  t.false(piped.stdout.includes("\x1b["), piped.stdout);
  t.true(piped.stdout.includes("USAGE"));
  t.true(cli(["launch", "--help"], { NO_COLOR: undefined, FORCE_COLOR: "1" }).stdout.includes("\x1b["));
  t.false(cli(["--help"], { NO_COLOR: "1", FORCE_COLOR: undefined }).stdout.includes("\x1b["));
});

(hasScript ? test : test.skip)(`--help on a terminal is coloured unless NO_COLOR${hasScript ? "" : " (skipped: util-linux script is not installed)"}`, (t) => {
  // A terminal that can show colours (CI runners often say TERM=dumb).
  const env: NodeJS.ProcessEnv = { ...process.env, HF_HOME: mkdtempSync(join(tmpdir(), "cli-hf-")), TERM: "xterm-256color" };
  delete env.NO_COLOR;
  delete env.FORCE_COLOR;
  const command = `'${process.execPath}' '${bin}' --help`;
  t.true(spawnSync("script", ["-qfec", command, "/dev/null"], { env, encoding: "utf8" }).stdout.includes("\x1b["));
  t.false(spawnSync("script", ["-qfec", command, "/dev/null"], { env: { ...env, NO_COLOR: "1" }, encoding: "utf8" }).stdout.includes("\x1b["));
});
