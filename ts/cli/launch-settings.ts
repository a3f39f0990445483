// Turns `accelerate launch` flags and the config file into a LaunchPlan:
// flags win over the config file, which wins over detected defaults.
import { resolve } from "node:path";
import type { LaunchPlan } from "../launch/plan.js";
import { readDeepSpeedConfigFile } from "../strategy/deepspeed-config.js";
import { isZeroStage, parseBooleanText, parseOffloadDevice, zeroChoiceProblem, type OffloadDevice, type ZeroStage } from "../strategy/zero-options.js";
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
  offload_optimizer_device?: string;
  offload_param_device?: string;
  zero3_init_flag?: string;
  fsdp_offload_params?: string;
}

export const DEFAULT_MAIN_PROCESS_PORT = 29500;

type StrategyPlan = Pick<
  LaunchPlan,
  "zeroStage" | "deepspeedConfigFile" | "gradientClipping" | "offloadOptimizerDevice" | "offloadParamDevice" | "zero3Init" | "fsdp"
>;

/** Flags that only mean something with --use_deepspeed, and with --use_fsdp. */
const DEEPSPEED_FLAGS = ["zero_stage", "gradient_clipping", "offload_optimizer_device", "offload_param_device", "zero3_init_flag"] as const;
const FSDP_FLAGS = ["fsdp_version", "fsdp_reshard_after_forward", "fsdp_offload_params"] as const;

/** A setting and the flag or key that gave it, to name in messages. */
interface Given<T> {
  value: T;
  name: string;
}

const deviceOf = (offload: boolean): OffloadDevice => (offload ? "cpu" : "none");

function fsdpPlan(flags: LaunchFlags, config: ClusterConfig, who: string): StrategyPlan {
  const section = config.fsdp_config ?? {};
  const version = flags.fsdp_version === undefined ? (section.fsdp_version ?? 2) : Number(flags.fsdp_version);
  if (version !== 2) throw new Error(`${who}: --fsdp_version must be 2 (FSDP1 is not available), got ${flags.fsdp_version ?? version}`);
  const flag = (name: "fsdp_reshard_after_forward" | "fsdp_offload_params"): boolean | undefined => {
    const text = flags[name];
    return text === undefined ? undefined : parseBooleanText(text, `${who}: --${name}`);
  };
  // FSDP2's default is full shard: ZeRO stage 3.
  const reshardAfterForward = flag("fsdp_reshard_after_forward") ?? section.fsdp_reshard_after_forward ?? true;
  const offloadParams = flag("fsdp_offload_params") ?? section.fsdp_offload_params ?? false;
  return { zeroStage: reshardAfterForward ? 3 : 2, fsdp: { version: 2, reshardAfterForward, offloadParams } };
}

function deepspeedPlan(flags: LaunchFlags, config: ClusterConfig, who: string): StrategyPlan {
  const section = config.deepspeed_config ?? {};
  const configFile = flags.deepspeed_config_file ?? section.deepspeed_config_file ?? undefined;
  /** The flag's value, else the config file section's. */
  const given = <T>(flag: string, flagValue: T | undefined, sectionValue: T | undefined): Given<T> | undefined =>
    flagValue !== undefined
      ? { value: flagValue, name: `--${flag}` }
      : sectionValue !== undefined
        ? { value: sectionValue, name: `the config file's deepspeed_config.${flag}` }
        : undefined;
  let stageFlag: ZeroStage | undefined;
  if (flags.zero_stage !== undefined) {
    const stage = /^\s*\d+\s*$/.test(flags.zero_stage) ? Number(flags.zero_stage) : Number.NaN;
    if (!isZeroStage(stage)) throw new Error(`${who}: --zero_stage must be 0, 1, 2 or 3, got ${JSON.stringify(flags.zero_stage)}`);
    stageFlag = stage;
  }
  const deviceFlag = (name: "offload_optimizer_device" | "offload_param_device"): OffloadDevice | undefined => {
    const text = flags[name];
    // HF's launcher lower-cases devices.
    return text === undefined ? undefined : deviceOf(parseOffloadDevice(text.toLowerCase(), `${who}: --${name}`));
  };
  let stage = given("zero_stage", stageFlag, section.zero_stage);
  let offloadOptimizer = given("offload_optimizer_device", deviceFlag("offload_optimizer_device"), section.offload_optimizer_device);
  let offloadParam = given("offload_param_device", deviceFlag("offload_param_device"), section.offload_param_device);
  const zero3Init = flags.zero3_init_flag === undefined ? section.zero3_init_flag : parseBooleanText(flags.zero3_init_flag, `${who}: --zero3_init_flag`);
  let clipping: number | undefined;
  if (flags.gradient_clipping !== undefined) {
    clipping = Number(flags.gradient_clipping);
    if (!(clipping >= 0)) throw new Error(`${who}: --gradient_clipping must be a non-negative number, got ${JSON.stringify(flags.gradient_clipping)}`);
  } else {
    clipping = section.gradient_clipping;
  }
  const exported = {
    offloadOptimizerDevice: offloadOptimizer?.value,
    offloadParamDevice: offloadParam?.value,
    zero3Init,
    gradientClipping: clipping,
  };
  let path: string | undefined;
  if (configFile !== undefined) {
    path = resolve(configFile);
    // Read here so that a wrong file fails once, before any rank starts.
    const file = readDeepSpeedConfigFile(path);
    /** The launcher's setting and the file's must agree; the file's fills in when the launcher gives none. */
    const agree = <T>(mine: Given<T> | undefined, key: string, theirs: T | undefined): Given<T> | undefined => {
      if (mine !== undefined && theirs !== undefined && mine.value !== theirs) {
        throw new Error(`${who}: ${mine.name} ${mine.value} disagrees with ${key} ${theirs} in ${configFile}; give it once`);
      }
      return mine ?? (theirs === undefined ? undefined : { value: theirs, name: `${configFile}'s ${key}` });
    };
    const fileDevice = (offload: boolean | undefined): OffloadDevice | undefined => (offload === undefined ? undefined : deviceOf(offload));
    stage = agree(stage, "zero_optimization.stage", file.zeroStage);
    offloadOptimizer = agree(offloadOptimizer, "zero_optimization.offload_optimizer.device", fileDevice(file.offloadOptimizer));
    offloadParam = agree(offloadParam, "zero_optimization.offload_param.device", fileDevice(file.offloadParameters));
  }
  const zeroStage = stage?.value ?? 2;
  const problem = zeroChoiceProblem({
    stage: stage ?? { value: zeroStage, name: "the ZeRO stage (default 2)" },
    offloadOptimizer: { value: offloadOptimizer?.value === "cpu", name: `${offloadOptimizer?.name} cpu` },
    offloadParameters: { value: offloadParam?.value === "cpu", name: `${offloadParam?.name} cpu` },
  });
  if (problem !== undefined) throw new Error(`${who}: ${problem}`);
  return { zeroStage, ...(path === undefined ? {} : { deepspeedConfigFile: path }), ...exported };
}

/** The strategy part of the plan: DeepSpeed's or FSDP's flags, else the config file's `distributed_type` and section. */
function strategyPlan(flags: LaunchFlags, config: ClusterConfig, who: string): StrategyPlan {
  const deepspeedFlags = flags.use_deepspeed || flags.deepspeed_config_file !== undefined;
  const useFsdp = flags.use_fsdp || (!deepspeedFlags && config.distributed_type === "FSDP");
  const useDeepspeed = deepspeedFlags || (!flags.use_fsdp && config.distributed_type === "DEEPSPEED");
  if (useFsdp && useDeepspeed) throw new Error(`${who}: give --use_deepspeed or --use_fsdp, not both`);
  for (const name of DEEPSPEED_FLAGS) {
    if (flags[name] !== undefined && !useDeepspeed) throw new Error(`${who}: --${name} needs --use_deepspeed`);
  }
  for (const name of FSDP_FLAGS) {
    if (flags[name] !== undefined && !useFsdp) throw new Error(`${who}: --${name} needs --use_fsdp`);
  }
  if (useFsdp) return fsdpPlan(flags, config, who);
  if (useDeepspeed) return deepspeedPlan(flags, config, who);
  return { zeroStage: 0 };
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
