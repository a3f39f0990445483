// The `accelerate` CLI and notebookLauncher: rank environment, output prefixes,
// failure teardown, ports, config precedence and validation, `config default`,
// `env`, `test`, two "machines" on one host, and launching from inside Node.
import test from "ava";
import { freePort, lastJson, worstDifferences } from "./helpers/ranks.js";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import YAML from "yaml";
import { notebookLauncher, NotebookLaunchError } from "../ts/index.js";
import { libtorch, native } from "../ts/native.js";
import { parseClusterConfig, readClusterConfig } from "../ts/cli/config-file.js";
import { askClusterConfig } from "../ts/cli/questionnaire.js";
import { scriptedAsk } from "./helpers/scripted-ask.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = join(root, "ts", "cli", "bin.mjs");
const fixture = (name: string): string => join(root, "__test__", "fixtures", "cli", name);

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A fresh HF_HOME, so that no user's default config takes part. */
const isolatedEnv = (): NodeJS.ProcessEnv => ({ ...process.env, HF_HOME: mkdtempSync(join(tmpdir(), "cli-hf-")), NO_COLOR: "1" });

interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** Kill the run and fail if it is still going this long after start. */
  limitMs?: number;
  /** Kill the run and fail if it is still going `ms` after `text` appeared in its output. */
  exitWithin?: { text: string; ms: number };
  onSpawn?: (pid: number) => void;
  onStdout?: (stdout: string) => void;
}

/** Runs `accelerate ...` and collects its output. */
function runCli(args: string[], options: RunOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: options.env ?? isolatedEnv(), cwd: root });
    let stdout = "";
    let stderr = "";
    const timers: NodeJS.Timeout[] = [];
    const failAfter = (ms: number, why: string): void => {
      timers.push(
        setTimeout(() => {
          child.kill("SIGKILL");
          reject(new Error(`accelerate ${args.join(" ")}: ${why}\nstdout: ${stdout}\nstderr: ${stderr}`));
        }, ms),
      );
    };
    let deadlineArmed = false;
    const watch = (): void => {
      const { exitWithin } = options;
      if (exitWithin && !deadlineArmed && (stdout + stderr).includes(exitWithin.text)) {
        deadlineArmed = true;
        failAfter(exitWithin.ms, `still running ${exitWithin.ms} ms after "${exitWithin.text}"`);
      }
    };
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      watch();
      options.onStdout?.(stdout);
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
      watch();
    });
    failAfter(options.limitMs ?? 40_000, `still running after ${options.limitMs ?? 40_000} ms`);
    if (child.pid !== undefined) options.onSpawn?.(child.pid);
    child.on("close", (code) => {
      for (const timer of timers) clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

type RankEnv = Record<string, string | undefined> & { argv: string[] };

/** The JSON each print-env.ts rank printed, by RANK. */
function rankEnvs(stdout: string): RankEnv[] {
  return stdout
    .split("\n")
    .map((line) => /^\[rank \d+\] ENV (.*)$/.exec(line) ?? /^ENV (.*)$/.exec(line))
    .filter((match): match is RegExpExecArray => match !== null)
    .map((match) => JSON.parse(match[1]) as RankEnv)
    .sort((a, b) => Number(a.RANK) - Number(b.RANK));
}


/** Whether `pid` runs (a zombie waiting to be reaped by init does not count). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** A SIGKILLed process dies as soon as the kernel schedules it: allow it a moment. */
async function goneSoon(pid: number): Promise<boolean> {
  for (let i = 0; i < 40 && isRunning(pid); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  return !isRunning(pid);
}

test("launch with 2 processes gives each rank its RANK, LOCAL_RANK, WORLD_SIZE and the same MASTER_ADDR/PORT", async (t) => {
  const port = await freePort();
  const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", String(port), "--cpu", fixture("print-env.ts")]);
  t.is(result.code, 0, result.stderr);
  const envs = rankEnvs(result.stdout);
  t.deepEqual(envs.map((e) => [e.RANK, e.LOCAL_RANK, e.WORLD_SIZE, e.LOCAL_WORLD_SIZE, e.GROUP_RANK]), [
    ["0", "0", "2", "2", "0"],
    ["1", "1", "2", "2", "0"],
  ]);
  for (const env of envs) {
    t.is(env.MASTER_ADDR, "127.0.0.1");
    t.is(env.MASTER_PORT, String(port));
    t.is(env.ACCELERATE_USE_CPU, "true");
  }
});

test("each rank's output lines come out whole, prefixed [rank N], on stdout and stderr", async (t) => {
  const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", String(await freePort()), fixture("print-env.ts")]);
  t.is(result.code, 0, result.stderr);
  const rankLines = result.stdout.split("\n").filter((line) => line !== "" && !line.includes("WARN"));
  for (const line of rankLines) t.regex(line, /^\[rank [01]\] /);
  for (const rank of [0, 1]) {
    t.true(rankLines.includes(`[rank ${rank}] first of two ${rank}`));
    t.true(rankLines.includes(`[rank ${rank}] second of two ${rank}`));
    t.true(rankLines.includes(`[rank ${rank}] a line written in two pieces ${rank}`));
    t.true(result.stderr.split("\n").includes(`[rank ${rank}] to stderr ${rank}`));
  }
});

test("the script's own arguments pass through untouched, even ones named like launcher flags", async (t) => {
  const result = await runCli(["launch", "--num_processes", "1", fixture("print-env.ts"), "--num_processes", "8", "--help", "x"]);
  t.is(result.code, 0, result.stderr);
  const [env] = rankEnvs(result.stdout);
  t.deepEqual(env.argv, ["--num_processes", "8", "--help", "x"]);
  t.is(env.WORLD_SIZE, "1");
});

test("a misspelt launcher option is an error naming it, not taken for the script", async (t) => {
  const result = await runCli(["launch", "--num_proceses", "2", fixture("print-env.ts")]);
  t.is(result.code, 1);
  t.regex(result.stderr, /unknown option --num_proceses \(did you mean --num_processes\?\)/);
});

test("when rank 1 crashes, launch stops rank 0 (which ignores SIGTERM) and its child, and exits with rank 1's code", async (t) => {
  const pidDir = mkdtempSync(join(tmpdir(), "cli-pids-"));
  const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", String(await freePort()), fixture("crash.ts")], {
    env: { ...isolatedEnv(), PID_DIR: pidDir },
    exitWithin: { text: "rank 1 crashing on purpose", ms: 10_000 },
  });
  t.is(result.code, 3);
  t.regex(result.stderr, /rank 1 \(pid \d+\) exited with code 3; stopped the other ranks/);
  t.regex(result.stderr, /\[rank 1\] rank 1 crashing on purpose/);
  const pids = readdirSync(pidDir).map((name) => Number(readFileSync(join(pidDir, name), "utf8")));
  t.is(pids.length, 3);
  for (const pid of pids) t.true(await goneSoon(pid), `pid ${pid} is still running`);
});

test("SIGINT to the launcher is forwarded once to every rank", async (t) => {
  let launcherPid = 0;
  let sent = false;
  const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", String(await freePort()), fixture("interruptible.mjs")], {
    onSpawn: (pid) => (launcherPid = pid),
    onStdout: (stdout) => {
      if (!sent && stdout.includes("[rank 0] ready 0") && stdout.includes("[rank 1] ready 1")) {
        sent = true;
        process.kill(launcherPid, "SIGINT");
      }
    },
  });
  t.is(result.code, 130);
  t.true(result.stdout.includes("[rank 0] got SIGINT 0"));
  t.true(result.stdout.includes("[rank 1] got SIGINT 1"));
  t.regex(result.stderr, /interrupted by SIGINT/);
});

test("a busy --main_process_port fails before any rank starts, naming the port", async (t) => {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  try {
    const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", String(port), fixture("print-env.ts")]);
    t.is(result.code, 1);
    t.true(result.stderr.includes(`accelerate launch: port ${port} on 127.0.0.1 is already in use; pass --main_process_port 0 to pick a free one`), result.stderr);
    t.false(result.stdout.includes("[rank"));
  } finally {
    server.close();
  }
});

test("--main_process_port 0 picks one free port shared by all ranks", async (t) => {
  const result = await runCli(["launch", "--num_processes", "2", "--main_process_port", "0", fixture("print-env.ts")]);
  t.is(result.code, 0, result.stderr);
  const ports = rankEnvs(result.stdout).map((env) => Number(env.MASTER_PORT));
  t.is(ports.length, 2);
  t.is(ports[0], ports[1]);
  t.true(Number.isInteger(ports[0]) && ports[0] > 0 && ports[0] <= 65535);
});

test("flags override the config file, which overrides defaults", async (t) => {
  const env = isolatedEnv();
  const port = await freePort();
  // The default config file location is used when --config_file is not given.
  const configPath = join(env.HF_HOME!, "accelerate", "default_config.yaml");
  mkdirSync(join(env.HF_HOME!, "accelerate"), { recursive: true });
  writeFileSync(configPath, YAML.stringify({ num_processes: 2, mixed_precision: "fp16", gradient_accumulation_steps: 4, main_process_port: port, use_cpu: true }));
  const fromConfig = rankEnvs((await runCli(["launch", fixture("print-env.ts")], { env })).stdout);
  t.deepEqual(
    fromConfig.map((e) => [e.WORLD_SIZE, e.ACCELERATE_MIXED_PRECISION, e.ACCELERATE_GRADIENT_ACCUMULATION_STEPS, e.MASTER_PORT, e.ACCELERATE_USE_CPU]),
    [["2", "fp16", "4", String(port), "true"], ["2", "fp16", "4", String(port), "true"]],
  );
  const flagged = rankEnvs((await runCli(["launch", "--mixed_precision", "bf16", "--num_processes", "1", "--gradient_accumulation_steps", "2", fixture("print-env.ts")], { env })).stdout);
  t.deepEqual(flagged.map((e) => [e.WORLD_SIZE, e.ACCELERATE_MIXED_PRECISION, e.ACCELERATE_GRADIENT_ACCUMULATION_STEPS]), [["1", "bf16", "2"]]);

  // No config: one process per GPU (or 1), no mixed precision, port 29500, a warning naming the defaults.
  const bare = await runCli(["launch", fixture("print-env.ts")]);
  const gpus = native.cudaIsAvailable() ? native.cudaDeviceCount() : 0;
  const defaults = rankEnvs(bare.stdout);
  t.is(defaults.length, Math.max(1, gpus), bare.stderr);
  t.deepEqual([defaults[0].WORLD_SIZE, defaults[0].ACCELERATE_MIXED_PRECISION, defaults[0].ACCELERATE_GRADIENT_ACCUMULATION_STEPS], [String(Math.max(1, gpus)), "no", "1"]);
  t.is(defaults[0].MASTER_PORT, "29500");
  t.regex(bare.stderr, /no config file, so these defaults were used: --num_processes \d+\./);
});

test("OMP_NUM_THREADS is split between local ranks unless already set", async (t) => {
  const port = String(await freePort());
  const envs = rankEnvs((await runCli(["launch", "--num_processes", "2", "--main_process_port", port, fixture("print-env.ts")], { env: { ...isolatedEnv(), OMP_NUM_THREADS: "" } })).stdout);
  const cpus = (await import("node:os")).availableParallelism();
  t.deepEqual(envs.map((e) => e.OMP_NUM_THREADS), [String(Math.max(1, Math.floor(cpus / 2))), String(Math.max(1, Math.floor(cpus / 2)))]);
  const kept = rankEnvs((await runCli(["launch", "--num_processes", "2", "--main_process_port", port, fixture("print-env.ts")], { env: { ...isolatedEnv(), OMP_NUM_THREADS: "7" } })).stdout);
  t.deepEqual(kept.map((e) => e.OMP_NUM_THREADS), ["7", "7"]);
});

test("a config with an unknown key or an ill-typed value is an Error naming the key", (t) => {
  t.throws(() => parseClusterConfig({ num_processes: "two" }, "cfg.yaml"), { message: 'config file cfg.yaml: "num_processes" must be a positive integer, got "two"' });
  t.throws(() => parseClusterConfig({ num_proceses: 2 }, "cfg.yaml"), { message: 'config file cfg.yaml: unknown key "num_proceses" (did you mean "num_processes"?)' });
  t.throws(() => parseClusterConfig({ mixed_precision: "fp4" }, "cfg.yaml"), { message: 'config file cfg.yaml: "mixed_precision" must be one of "no", "fp16", "bf16", "fp8", got "fp4"' });
  t.deepEqual(parseClusterConfig({ mixed_precision: "fp8" }, "cfg.yaml"), { mixed_precision: "fp8" });
  t.throws(() => parseClusterConfig({ use_cpu: "yes" }, "cfg.yaml"), { message: 'config file cfg.yaml: "use_cpu" must be true or false, got "yes"' });
  t.throws(() => parseClusterConfig({ num_machines: 2, machine_rank: 2 }, "cfg.yaml"), { message: /"machine_rank" must be below "num_machines" \(2\), got 2/ });
  t.throws(() => parseClusterConfig({ constructor: 1 }, "cfg.yaml"), { message: /unknown key "constructor"/ });
  // A file Hugging Face's `accelerate config` writes loads (TPU keys and empty sections are ignored).
  t.deepEqual(
    parseClusterConfig(
      YAML.parse("compute_environment: LOCAL_MACHINE\ndebug: false\ndistributed_type: MULTI_GPU\ndowncast_bf16: 'no'\nenable_cpu_affinity: false\ngpu_ids: 0,1\nmachine_rank: 0\nmain_training_function: main\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 2\nrdzv_backend: static\nsame_network: true\ntpu_env: []\ntpu_use_cluster: false\ntpu_use_sudo: false\nuse_cpu: false\n"),
      "hf.yaml",
    ),
    {
      compute_environment: "LOCAL_MACHINE", debug: false, distributed_type: "MULTI_GPU", downcast_bf16: "no", enable_cpu_affinity: false, gpu_ids: "0,1",
      machine_rank: 0, main_training_function: "main", mixed_precision: "bf16", num_machines: 1, num_processes: 2, rdzv_backend: "static", same_network: true, use_cpu: false,
    },
  );
});

test("launch reports a bad config file by file and key", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "cli-cfg-"));
  const path = join(dir, "bad.yaml");
  writeFileSync(path, "num_processes: two\n");
  const result = await runCli(["launch", "--config_file", path, fixture("print-env.ts")]);
  t.is(result.code, 1);
  t.true(result.stderr.includes(`config file ${path}: "num_processes" must be a positive integer, got "two"`), result.stderr);
  const flag = await runCli(["launch", "--num_processes", "two", fixture("print-env.ts")]);
  t.true(flag.stderr.includes('accelerate launch: --num_processes must be a positive integer, got "two"'), flag.stderr);
});

test("config default writes a config for this machine and refuses to overwrite it", async (t) => {
  const path = join(mkdtempSync(join(tmpdir(), "cli-cfg-")), "sub", "accelerate.yaml");
  const first = await runCli(["config", "default", "--config_file", path, "--mixed_precision", "bf16"]);
  t.is(first.code, 0, first.stderr);
  t.true(first.stdout.includes(path) || first.stderr.includes(path));
  const written = readClusterConfig(path);
  const gpus = native.cudaIsAvailable() ? native.cudaDeviceCount() : 0;
  t.like(written, { compute_environment: "LOCAL_MACHINE", mixed_precision: "bf16", num_machines: 1, num_processes: Math.max(1, gpus), use_cpu: gpus === 0 });
  const before = readFileSync(path, "utf8");
  const second = await runCli(["config", "default", "--config_file", path]);
  t.is(second.code, 1);
  t.true(second.stderr.includes(`${path} already exists; not overwriting it`), second.stderr);
  t.is(readFileSync(path, "utf8"), before);
});

test("config default goes to $HF_HOME/accelerate/default_config.yaml, which env then shows", async (t) => {
  const env = isolatedEnv();
  t.is((await runCli(["config", "default"], { env })).code, 0);
  const path = join(env.HF_HOME!, "accelerate", "default_config.yaml");
  t.true(existsSync(path));
  const shown = await runCli(["env"], { env });
  t.is(shown.code, 0, shown.stderr);
  t.true(shown.stdout.includes(`- Config file: ${path}\n`));
  t.true(shown.stdout.includes("\tcompute_environment: LOCAL_MACHINE"));
});

test("env prints where libtorch was found and why", async (t) => {
  const result = await runCli(["env"]);
  t.is(result.code, 0, result.stderr);
  t.true(result.stdout.includes(`- libtorch: ${libtorch.dir}\n`), result.stdout);
  t.true(result.stdout.includes(`found through ${libtorch.source}`));
  t.true(result.stdout.includes(`- Node.js version: ${process.version}`));
  t.regex(result.stdout, /- CUDA available: (no|yes, \d+ device\(s\))/);
});

test("test runs the self-check through the launcher on 2 processes and prints PASS", async (t) => {
  // A free port: the default 29500 may be taken by another run on the machine.
  const result = await runCli(["test", "--num_processes", "2", "--cpu", "--main_process_port", "0"]);
  t.is(result.code, 0, result.stderr);
  t.regex(result.stdout, /\[rank 0\] self-check rank 0\/2 on cpu: ok \(rank environment, tensor ops/);
  t.regex(result.stdout, /\[rank 1\] self-check rank 1\/2 on cpu: ok \(rank environment, tensor ops/);
  t.regex(result.stdout, /accelerate test: PASS/);
});

test("two machines on one host: 4 processes in total get WORLD_SIZE 4 and RANKs 0..3", async (t) => {
  const port = String(await freePort());
  const machine = (rank: number): Promise<CliResult> =>
    runCli(["launch", "--num_machines", "2", "--machine_rank", String(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "4", fixture("print-env.ts")]);
  const results = await Promise.all([machine(0), machine(1)]);
  for (const result of results) t.is(result.code, 0, result.stderr);
  const envs = results.flatMap((result) => rankEnvs(result.stdout));
  t.deepEqual(envs.map((e) => e.RANK).sort(), ["0", "1", "2", "3"]);
  for (const env of envs) {
    t.is(env.WORLD_SIZE, "4");
    t.is(env.LOCAL_WORLD_SIZE, "2");
    t.is(env.GROUP_RANK, String(Math.floor(Number(env.RANK) / 2)));
    t.is(env.LOCAL_RANK, String(Number(env.RANK) % 2));
    t.is(env.MASTER_ADDR, "127.0.0.1");
    t.is(env.MASTER_PORT, port);
  }
});

test("two machines on one host train together: the same parameters as one process with the global batch", async (t) => {
  const port = String(await freePort());
  const script = join(root, "__test__", "fixtures", "dist", "train-mlp.ts");
  const machine = (rank: number): Promise<CliResult> =>
    runCli(["launch", "--cpu", "--num_machines", "2", "--machine_rank", String(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "2", script, "8", "5"]);
  const [a, b] = await Promise.all([machine(0), machine(1)]);
  const alone = await runCli(["launch", "--cpu", "--num_processes", "1", "--main_process_port", "0", script, "16", "5"]);
  for (const result of [a, b, alone]) t.is(result.code, 0, result.stderr);
  const [ra, rb, single] = [lastJson(a.stdout), lastJson(b.stdout), lastJson(alone.stdout)];
  t.deepEqual([ra.rank, rb.rank].sort(), [0, 1]);
  t.deepEqual(ra.params, rb.params, "both machines hold identical parameters");
  for (const [name, worst] of worstDifferences(single.params, ra.params)) {
    t.true(worst < 1e-5, `${name} differs by ${worst}`);
  }
});

test("several machines need --main_process_ip, and a total divisible by the machines", async (t) => {
  const noIp = await runCli(["launch", "--num_machines", "2", "--num_processes", "4", fixture("print-env.ts")]);
  t.is(noIp.code, 1);
  t.regex(noIp.stderr, /--num_machines 2 needs --main_process_ip/);
  const uneven = await runCli(["launch", "--num_machines", "2", "--num_processes", "3", "--main_process_ip", "127.0.0.1", fixture("print-env.ts")]);
  t.regex(uneven.stderr, /must be divisible by --num_machines; got 3 processes on 2 machines/);
});

test("notebookLauncher runs fn on 2 processes with the rank environment and resolves", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "cli-notebook-"));
  const indexUrl = pathToFileURL(join(root, "ts", "index.ts")).href;
  await notebookLauncher(
    async (outDir: string, index: string) => {
      const { writeFileSync } = await import("node:fs");
      const { tensor } = (await import(index)) as typeof import("../ts/index.js");
      const value = tensor([1, 2, 3]).sum().item();
      writeFileSync(`${outDir}/rank${process.env.RANK}.json`, JSON.stringify({ world: process.env.WORLD_SIZE, value, precision: process.env.ACCELERATE_MIXED_PRECISION }));
    },
    [dir, indexUrl],
    { numProcesses: 2, usePort: 0, mixedPrecision: "bf16" },
  );
  for (const rank of [0, 1]) {
    t.deepEqual(JSON.parse(readFileSync(join(dir, `rank${rank}.json`), "utf8")), { world: "2", value: 6, precision: "bf16" });
  }
});

test("notebookLauncher rejects naming the rank that threw, and stops the other", async (t) => {
  const error = await t.throwsAsync(
    notebookLauncher(
      async (failing: number) => {
        if (process.env.RANK === String(failing)) throw new Error(`boom on rank ${failing}`);
        await new Promise(() => setInterval(() => {}, 1000));
      },
      [1],
      { numProcesses: 2, usePort: 0 },
    ),
    { instanceOf: NotebookLaunchError },
  );
  t.is(error.message, "notebookLauncher: rank 1 failed: Error: boom on rank 1");
  t.is(error.rank, 1);
  t.is(error.exitCode, 1);
});

test("notebookLauncher with one process runs fn here, with the rank environment only meanwhile", async (t) => {
  const before = process.env.WORLD_SIZE;
  let seen: string | undefined;
  await notebookLauncher(() => {
    seen = `${process.env.RANK}/${process.env.WORLD_SIZE}/${process.env.ACCELERATE_MIXED_PRECISION}`;
  }, [], { numProcesses: 1, mixedPrecision: "fp16" });
  t.is(seen, "0/1/fp16");
  t.is(process.env.WORLD_SIZE, before);
  await t.throwsAsync(notebookLauncher(() => { throw new Error("inside"); }, [], { numProcesses: 1 }), { message: "notebookLauncher: rank 0 failed: Error: inside" });
  await t.throwsAsync(notebookLauncher(() => {}, [1n] as unknown as [], { numProcesses: 2 }), { message: /args must be JSON-serialisable/ });
});

test("the config questionnaire builds a multi-machine multi-GPU config from the answers", async (t) => {
  // ..., GPU ids, DeepSpeed? no, FSDP? no, mixed precision, accumulation.
  const { ask, answers, warnings } = scriptedAsk(["MULTI_GPU", "2", "1", "10.0.0.1", "29501", true, "8", "0,1,2,3", false, false, "bf16", "4"]);
  const config = await askClusterConfig(ask, 4);
  t.deepEqual(config, {
    compute_environment: "LOCAL_MACHINE", distributed_type: "MULTI_GPU", debug: false, num_machines: 2, machine_rank: 1,
    main_process_ip: "10.0.0.1", main_process_port: 29501, same_network: true, rdzv_backend: "static", num_processes: 8,
    use_cpu: false, gpu_ids: "0,1,2,3", mixed_precision: "bf16", gradient_accumulation_steps: 4,
  });
  t.is(answers.length, 0);
  t.deepEqual(warnings, []);
  // The answers make a valid file.
  t.deepEqual(parseClusterConfig(JSON.parse(JSON.stringify(config)), "q.yaml"), config);

  // A bad answer is asked again; one process is asked about DeepSpeed only (as HF does).
  answers.push("NO", false, "all", false, "no", "zero", "1");
  const single = await askClusterConfig(ask, 1);
  t.like(single, { distributed_type: "NO", num_processes: 1, use_cpu: false, gpu_ids: "all", gradient_accumulation_steps: 1 });
  t.is(warnings.length, 1);
  t.regex(warnings[0], /"zero" is not an integer/);
});
