// Turns `accelerate launch` flags and the config file into a LaunchPlan:
// flags win over the config file, which wins over detected defaults.
import { resolve } from "node:path";
import type { LaunchPlan } from "../launch/plan.js";
import { readDeepSpeedConfigFile } from "../strategy/deepspeed-config.js";
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
  deepspeed_config_file?: string;
  gradient_clipping?: string;
  use_fsdp?: boolean;
  fsdp_version?: string;
  fsdp_reshard_after_forward?: string;
}

export const DEFAULT_MAIN_PROCESS_PORT = 29500;

/** The strategy part of the plan: DeepSpeed's or FSDP's flags, else the config file's `distributed_type` and section. */
function strategyPlan(flags: LaunchFlags, config: ClusterConfig, who: string): Pick<LaunchPlan, "zeroStage" | "deepspeedConfigFile" | "gradientClipping" | "fsdp"> {
  const deepspeedFlags = flags.use_deepspeed || flags.deepspeed_config_file !== undefined;
  const useFsdp = flags.use_fsdp || (!deepspeedFlags && config.distributed_type === "FSDP");
  const useDeepspeed = deepspeedFlags || (!flags.use_fsdp && config.distributed_type === "DEEPSPEED");
  if (useFsdp && useDeepspeed) throw new Error(`${who}: give --use_deepspeed or --use_fsdp, not both`);
  for (const name of ["zero_stage", "gradient_clipping"] as const) {
    if (flags[name] !== undefined && !useDeepspeed) throw new Error(`${who}: --${name} needs --use_deepspeed`);
  }
  for (const name of ["fsdp_version", "fsdp_reshard_after_forward"] as const) {
    if (flags[name] !== undefined && !useFsdp) throw new Error(`${who}: --${name} needs --use_fsdp`);
  }
  if (useFsdp) {
    const section = config.fsdp_config ?? {};
    const version = flags.fsdp_version === undefined ? (section.fsdp_version ?? 2) : Number(flags.fsdp_version);
    if (version !== 2) throw new Error(`${who}: --fsdp_version must be 2 (FSDP1 is not available), got ${flags.fsdp_version ?? version}`);
    const reshardText = flags.fsdp_reshard_after_forward;
    if (reshardText !== undefined && !["true", "false"].includes(reshardText.toLowerCase())) {
      throw new Error(`${who}: --fsdp_reshard_after_forward must be true or false, got ${JSON.stringify(reshardText)}`);
    }
    const reshard = reshardText === undefined ? (section.fsdp_reshard_after_forward ?? true) : reshardText.toLowerCase() === "true";
    if (reshard) {
      throw new Error(
        `${who}: FSDP with reshard_after_forward true (full shard, ZeRO stage 3) is not available yet; ` +
          "pass --fsdp_reshard_after_forward false (ZeRO stage 2) or set fsdp_reshard_after_forward: false in fsdp_config",
      );
    }
    return { zeroStage: 2, fsdp: { version: 2, reshardAfterForward: false } };
  }
  if (!useDeepspeed) return { zeroStage: 0 };
  const section = config.deepspeed_config ?? {};
  const configFile = flags.deepspeed_config_file ?? section.deepspeed_config_file ?? undefined;
  let stage: number | undefined;
  if (flags.zero_stage !== undefined) {
    stage = Number(flags.zero_stage);
    if (![0, 1, 2].includes(stage)) throw new Error(`${who}: --zero_stage must be 0, 1 or 2 (stage 3 is not available yet), got ${flags.zero_stage}`);
  } else {
    stage = section.zero_stage;
  }
  let clipping: number | undefined;
  if (flags.gradient_clipping !== undefined) {
    clipping = Number(flags.gradient_clipping);
    if (!(clipping >= 0)) throw new Error(`${who}: --gradient_clipping must be a non-negative number, got ${JSON.stringify(flags.gradient_clipping)}`);
  } else {
    clipping = section.gradient_clipping;
  }
  if (configFile !== undefined) {
    const path = resolve(configFile);
    // Read here so that a wrong file fails once, before any rank starts.
    const file = readDeepSpeedConfigFile(path);
    if (stage !== undefined && file.zeroStage !== undefined && stage !== file.zeroStage) {
      throw new Error(`${who}: --zero_stage ${stage} disagrees with zero_optimization.stage ${file.zeroStage} in ${configFile}; give the stage once`);
    }
    return { zeroStage: stage ?? file.zeroStage ?? 2, deepspeedConfigFile: path, gradientClipping: clipping };
  }
  return { zeroStage: stage ?? 2, gradientClipping: clipping };
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
    gradientAccumulationSteps: flag("gradient_accumulation_steps") ?? config.gradient_accumulation_steps ?? config.deepspeed_config?.gradient_accumulation_steps ?? 1,
    gpuIds: flag("gpu_ids") ?? config.gpu_ids,
    ...strategyPlan(flags, config, who),
  };
  return { plan, defaulted };
}
