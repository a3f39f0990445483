// `accelerate launch [flags] script [script args]`: runs a TypeScript or
// JavaScript training script on every local rank of this machine.
import { defineCommand, parseArgs, type ArgsDef } from "citty";
import { consola } from "consola";
import { launchRanks, nodeCommand, resolveScript } from "../../launch/launch.js";
import { MIXED_PRECISIONS } from "../../mixed-precision.js";
import { PortInUseError } from "../../launch/port.js";
import { describeFailure, exitCodeOf } from "../../launch/supervisor.js";
import { loadClusterConfig, unusedKeysNotice } from "../config-file.js";
import { colorEnvForRanks } from "../color.js";
import { splitLaunchArgv } from "../launch-argv.js";
import { resolveLaunchPlan, type LaunchFlags } from "../launch-settings.js";

export const launchArgs = {
  num_processes: { type: "string", valueHint: "N", description: "Processes in total, across all machines (default: the number of GPUs, or 1)" },
  num_machines: { type: "string", valueHint: "N", description: "Machines taking part (default 1)" },
  machine_rank: { type: "string", valueHint: "N", description: "This machine's rank, 0 .. num_machines-1; 0 hosts the rendezvous (default 0)" },
  main_process_ip: { type: "string", valueHint: "ADDRESS", description: "Address of machine 0 (required with several machines)" },
  main_process_port: { type: "string", valueHint: "PORT", description: "Rendezvous port on machine 0; 0 picks a free one (default 29500)" },
  mixed_precision: { type: "string", valueHint: MIXED_PRECISIONS.join("|"), description: "Mixed precision mode (default no)" },
  cpu: { type: "boolean", description: "Train on the CPU even when GPUs are present" },
  gradient_accumulation_steps: { type: "string", valueHint: "N", description: "Micro-batches per optimizer step (default 1)" },
  gpu_ids: { type: "string", valueHint: "all|0,1,...", description: "GPUs this machine uses (sets CUDA_VISIBLE_DEVICES)" },
  use_deepspeed: { type: "boolean", description: "Shard with ZeRO (DeepSpeed's dialect; see docs/zero.md)" },
  zero_stage: { type: "string", valueHint: "0|1|2|3", description: "ZeRO stage with --use_deepspeed (default 2, or the DeepSpeed config's)" },
  deepspeed_config_file: { type: "string", valueHint: "PATH", description: "A DeepSpeed JSON config (implies --use_deepspeed; see docs/zero.md)" },
  gradient_clipping: { type: "string", valueHint: "NORM", description: "DeepSpeed's gradient clipping, inside the optimizer's step" },
  offload_optimizer_device: { type: "string", valueHint: "none|cpu", description: "cpu: optimizer state and step on the CPU (ZeRO stages 1-3; default none)" },
  offload_param_device: { type: "string", valueHint: "none|cpu", description: "cpu: parameter shards on the CPU between uses (ZeRO stage 3; default none)" },
  zero3_init_flag: { type: "string", valueHint: "true|false", description: "Accepted for HF's configs; stage 3 shards the parameters at prepare anyway" },
  use_fsdp: { type: "boolean", description: "Shard with ZeRO in FSDP's dialect (FSDP2)" },
  fsdp_version: { type: "string", valueHint: "2", description: "FSDP version with --use_fsdp (only 2)" },
  fsdp_reshard_after_forward: { type: "string", valueHint: "true|false", description: "true (default): full shard, ZeRO stage 3; false: stage 2" },
  fsdp_offload_params: { type: "string", valueHint: "true|false", description: "true: optimizer (and, with full shard, parameters) on the CPU (default false)" },
  config_file: { type: "string", valueHint: "PATH", description: "Config file to read (default: $HF_HOME/accelerate/default_config.yaml if present)" },
} as const satisfies ArgsDef;

/** CUDA devices visible to libtorch; loading libtorch only when the answer is needed. */
export async function detectCudaDevices(): Promise<number> {
  try {
    const { native } = await import("../../native.js");
    return native.cudaIsAvailable() ? native.cudaDeviceCount() : 0;
  } catch (error) {
    consola.warn(`could not load libtorch to count GPUs, assuming none: ${(error as Error).message}`);
    return 0;
  }
}

/**
 * Ranks' output reaches the user through pipes, so tell them whether it ends on a
 * terminal, and its width: `ACCELERATE_TTY` (1 or 0) and `ACCELERATE_COLUMNS`, read by `progress`.
 */
export function terminalEnv(stream: { isTTY?: boolean; columns?: number } = process.stderr): Record<string, string> {
  const env: Record<string, string> = { ACCELERATE_TTY: stream.isTTY ? "1" : "0" };
  if (stream.isTTY && stream.columns) env.ACCELERATE_COLUMNS = String(stream.columns);
  return env;
}

/** Launches `scriptPath` with `flags` (+ config file); returns the exit code to end with. */
export async function launchScript(flags: LaunchFlags, scriptPath: string, scriptArgs: string[], who: string): Promise<number> {
  const loaded = loadClusterConfig(flags.config_file);
  const notice = unusedKeysNotice(loaded);
  if (notice !== undefined) consola.warn(`${who}: ${notice}`);
  const { plan, defaulted } = await resolveLaunchPlan(flags, loaded?.config, detectCudaDevices, who);
  if (loaded === undefined && defaulted.length > 0) {
    consola.warn(
      `${who}: no config file, so these defaults were used: ${defaulted.join(", ")}. ` +
        "Pass them as flags or run `accelerate config` to silence this.",
    );
  }
  let result;
  try {
    result = await launchRanks(plan, () => nodeCommand(scriptPath, scriptArgs), {
      baseEnv: { ...colorEnvForRanks(), ...terminalEnv() },
      portHint: "pass --main_process_port 0 to pick a free one",
      warn: (message) => consola.warn(`${who}: ${message}`),
    });
  } catch (error) {
    if (error instanceof PortInUseError) throw new Error(`${who}: ${error.message}`);
    throw error;
  }
  const others = plan.numProcesses / plan.numMachines > 1 ? "; stopped the other ranks" : "";
  if (result.failure) consola.error(`${who}: ${describeFailure(result.failure)}${others}`);
  else if (result.interrupted) consola.warn(`${who}: interrupted by ${result.interrupted}; stopped all ranks`);
  return exitCodeOf(result);
}

export default defineCommand({
  meta: { name: "launch", description: "Run a .ts/.js training script on N processes: accelerate launch [options] script.ts [script args]" },
  args: { ...launchArgs, script: { type: "positional", description: "The script (.ts, .js, .mjs), followed by its own arguments", required: true } },
  async run({ rawArgs }) {
    const { launcherArgs, script, scriptArgs } = splitLaunchArgv(rawArgs, launchArgs);
    if (script === undefined) throw new Error("accelerate launch: no script given; usage: accelerate launch [options] script.ts [script args]");
    const flags = parseArgs(launcherArgs, launchArgs) as LaunchFlags;
    process.exitCode = await launchScript(flags, resolveScript(script, "accelerate launch"), scriptArgs, "accelerate launch");
  },
});
