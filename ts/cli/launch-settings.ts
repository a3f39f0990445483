// Turns `accelerate launch` flags and the config file into a LaunchPlan:
// flags win over the config file, which wins over detected defaults.
import type { LaunchPlan } from "../launch/plan.js";
import { parseFlagValue, type ClusterConfig } from "./config-file.js";

/** The launcher flags as citty parses them (text; booleans for switches). */
export interface LaunchFlags {
  num_processes?: string;
  num_machines?: string;
  machine_rank?: string;
  main_process_ip?: string;
  main_process_port?: string;
  mixed_precision?: string;
  cpu?: boolean;
  gradient_accumulation_steps?: string;
  gpu_ids?: string;
  config_file?: string;
  use_deepspeed?: boolean;
  zero_stage?: string;
}

export const DEFAULT_MAIN_PROCESS_PORT = 29500;

/** `--use_deepspeed [--zero_stage N]` (HF's flags): the ZeRO stage, 2 by default; 0 without `--use_deepspeed`. */
function zeroStage(flags: LaunchFlags, who: string): number {
  if (flags.zero_stage !== undefined && !flags.use_deepspeed) throw new Error(`${who}: --zero_stage needs --use_deepspeed`);
  if (!flags.use_deepspeed) return 0;
  const stage = Number(flags.zero_stage ?? 2);
  if (![1, 2].includes(stage)) throw new Error(`${who}: --zero_stage must be 1 or 2 (stage 3 is not available yet), got ${flags.zero_stage}`);
  return stage;
}

export interface ResolvedLaunch {
  plan: LaunchPlan;
  /**
   * Settings that took a default the user might not expect, as `--flag value`: only the
   * number of processes, which follows the GPUs found (one machine and no mixed precision are what one expects).
   */
  defaulted: string[];
}

/**
 * Flags > config > defaults. `cudaDevices` is only asked when the number of
 * processes is given nowhere (it loads libtorch).
 */
export async function resolveLaunchPlan(
  flags: LaunchFlags,
  config: ClusterConfig = {},
  cudaDevices: () => Promise<number>,
  who = "accelerate launch",
): Promise<ResolvedLaunch> {
  const flag = <K extends keyof ClusterConfig & keyof LaunchFlags>(key: K): NonNullable<ClusterConfig[K]> | undefined => {
    const raw = flags[key];
    return typeof raw === "string" ? parseFlagValue(key, raw, who) : undefined;
  };
  const defaulted: string[] = [];
  const useCpu = flags.cpu ?? config.use_cpu ?? config.distributed_type === "MULTI_CPU";
  let numProcesses = flag("num_processes") ?? config.num_processes;
  if (numProcesses === undefined) {
    numProcesses = useCpu ? 1 : Math.max(1, await cudaDevices());
    // One CPU process is what --cpu suggests; a count that follows the GPUs found may surprise.
    if (!useCpu) defaulted.push(`--num_processes ${numProcesses}`);
  }
  let numMachines = flag("num_machines") ?? config.num_machines;
  numMachines ??= 1;
  const mixedPrecision = flag("mixed_precision") ?? config.mixed_precision ?? "no";
  const plan: LaunchPlan = {
    numProcesses,
    numMachines,
    machineRank: flag("machine_rank") ?? config.machine_rank ?? 0,
    mainProcessIp: flag("main_process_ip") ?? config.main_process_ip ?? undefined,
    mainProcessPort: flag("main_process_port") ?? config.main_process_port ?? DEFAULT_MAIN_PROCESS_PORT,
    mixedPrecision,
    useCpu,
    gradientAccumulationSteps: flag("gradient_accumulation_steps") ?? config.gradient_accumulation_steps ?? 1,
    gpuIds: flag("gpu_ids") ?? config.gpu_ids,
    zeroStage: zeroStage(flags, who),
  };
  return { plan, defaulted };
}
