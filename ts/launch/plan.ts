// What to launch on this machine (a LaunchPlan) and the environment each local
// rank gets: the torchrun contract (RANK, WORLD_SIZE, MASTER_ADDR, ...) plus
// Accelerate's ACCELERATE_* settings.
import { availableParallelism } from "node:os";
import { STRATEGY_ENV } from "../env-names.js";
import type { OffloadDevice, ZeroStage } from "../strategy/zero-options.js";

import type { MixedPrecision } from "../mixed-precision.js";

export type { MixedPrecision };

export interface LaunchPlan {
  /** Processes in the whole run, across all machines. */
  numProcesses: number;
  numMachines: number;
  /** This machine's index (GROUP_RANK), 0 hosts the rendezvous. */
  machineRank: number;
  /** Address of machine 0; required with several machines. */
  mainProcessIp?: string;
  /** Rendezvous port on the main machine; 0 picks a free one (one machine only). */
  mainProcessPort: number;
  mixedPrecision: MixedPrecision;
  useCpu: boolean;
  gradientAccumulationSteps: number;
  /** "all" or a comma-separated list of GPU ids, exported as CUDA_VISIBLE_DEVICES. */
  gpuIds?: string;
  /** ZeRO stage (0: plain data parallelism), exported as HF's ACCELERATE_USE_DEEPSPEED / ACCELERATE_DEEPSPEED_ZERO_STAGE. */
  zeroStage?: ZeroStage;
  /** A DeepSpeed config file (absolute), exported as ACCELERATE_DEEPSPEED_CONFIG_FILE. */
  deepspeedConfigFile?: string;
  /** DeepSpeed's gradient clipping, exported as ACCELERATE_GRADIENT_CLIPPING. */
  gradientClipping?: number;
  /** DeepSpeed's optimizer offload when a flag or the config file gives it, exported as ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE. */
  offloadOptimizerDevice?: OffloadDevice;
  /** DeepSpeed's parameter offload when a flag or the config file gives it, exported as ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE. */
  offloadParamDevice?: OffloadDevice;
  /** HF's zero3_init_flag when given, exported as ACCELERATE_DEEPSPEED_ZERO3_INIT (accepted; stage 3 shards at prepare). */
  zero3Init?: boolean;
  /**
   * FSDP2 (reshard after forward: ZeRO stage 3, else 2; offload params: CPU offload), exported as
   * ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_RESHARD_AFTER_FORWARD, FSDP_OFFLOAD_PARAMS.
   */
  fsdp?: { version: number; reshardAfterForward: boolean; offloadParams: boolean };
}

/** Ranks this machine starts. */
export function localProcessCount(plan: LaunchPlan): number {
  return plan.numProcesses / plan.numMachines;
}

/** MASTER_ADDR: loopback on one machine, the main machine's address on several. */
export function masterAddress(plan: LaunchPlan): string {
  return plan.numMachines > 1 ? (plan.mainProcessIp ?? "") : "127.0.0.1";
}

/** Throws an Error naming the flag when the plan cannot be launched as given. */
export function checkPlan(plan: LaunchPlan): void {
  const positive = (name: string, value: number): void => {
    if (!Number.isInteger(value) || value < 1) throw new Error(`accelerate launch: --${name} must be a positive integer, got ${value}`);
  };
  positive("num_processes", plan.numProcesses);
  positive("num_machines", plan.numMachines);
  positive("gradient_accumulation_steps", plan.gradientAccumulationSteps);
  if (!Number.isInteger(plan.machineRank) || plan.machineRank < 0 || plan.machineRank >= plan.numMachines) {
    throw new Error(`accelerate launch: --machine_rank must be an integer in [0, ${plan.numMachines - 1}] for --num_machines ${plan.numMachines}, got ${plan.machineRank}`);
  }
  if (plan.numProcesses % plan.numMachines !== 0) {
    throw new Error(
      `accelerate launch: --num_processes is the total across machines and must be divisible by --num_machines; ` +
        `got ${plan.numProcesses} processes on ${plan.numMachines} machines`,
    );
  }
  if (!Number.isInteger(plan.mainProcessPort) || plan.mainProcessPort < 0 || plan.mainProcessPort > 65535) {
    throw new Error(`accelerate launch: --main_process_port must be an integer in [0, 65535], got ${plan.mainProcessPort}`);
  }
  if (plan.numMachines > 1) {
    if (!plan.mainProcessIp) {
      throw new Error(`accelerate launch: --num_machines ${plan.numMachines} needs --main_process_ip, the address of machine 0 that every machine can reach`);
    }
    if (plan.mainProcessPort === 0) {
      throw new Error("accelerate launch: --main_process_port 0 (pick a free port) only works on one machine; with several, every machine must be given the same port");
    }
  }
}

/** HF's variables for the strategy: FSDP's, or DeepSpeed's (when a stage or a DeepSpeed config file is asked for). */
export function strategyEnvironment(plan: LaunchPlan): Record<string, string> {
  if (plan.fsdp) {
    return {
      [STRATEGY_ENV.useFsdp]: "true",
      [STRATEGY_ENV.fsdpVersion]: String(plan.fsdp.version),
      [STRATEGY_ENV.fsdpReshardAfterForward]: String(plan.fsdp.reshardAfterForward),
      [STRATEGY_ENV.fsdpOffloadParams]: String(plan.fsdp.offloadParams),
    };
  }
  if (!plan.zeroStage && plan.deepspeedConfigFile === undefined) return {};
  const env: Record<string, string> = { [STRATEGY_ENV.useDeepspeed]: "true", [STRATEGY_ENV.zeroStage]: String(plan.zeroStage ?? 0) };
  if (plan.deepspeedConfigFile !== undefined) env[STRATEGY_ENV.deepspeedConfigFile] = plan.deepspeedConfigFile;
  if (plan.gradientClipping !== undefined) env[STRATEGY_ENV.gradientClipping] = String(plan.gradientClipping);
  if (plan.offloadOptimizerDevice !== undefined) env[STRATEGY_ENV.offloadOptimizerDevice] = plan.offloadOptimizerDevice;
  if (plan.offloadParamDevice !== undefined) env[STRATEGY_ENV.offloadParamDevice] = plan.offloadParamDevice;
  if (plan.zero3Init !== undefined) env[STRATEGY_ENV.zero3Init] = String(plan.zero3Init);
  return env;
}

/**
 * The environment of local rank `localRank`: `base` (usually process.env) plus
 * the rank variables. `port` is the resolved MASTER_PORT (never 0).
 */
export function rankEnvironment(
  plan: LaunchPlan,
  localRank: number,
  port: number,
  base: NodeJS.ProcessEnv = process.env,
  cpus: number = availableParallelism(),
): Record<string, string> {
  const local = localProcessCount(plan);
  const rank = plan.machineRank * local + localRank;
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(base)) if (value !== undefined) env[key] = value;
  Object.assign(env, {
    RANK: String(rank),
    LOCAL_RANK: String(localRank),
    WORLD_SIZE: String(plan.numProcesses),
    LOCAL_WORLD_SIZE: String(local),
    GROUP_RANK: String(plan.machineRank),
    GROUP_WORLD_SIZE: String(plan.numMachines),
    ROLE_RANK: String(rank),
    ROLE_WORLD_SIZE: String(plan.numProcesses),
    ROLE_NAME: "default",
    MASTER_ADDR: masterAddress(plan),
    MASTER_PORT: String(port),
    ACCELERATE_MIXED_PRECISION: plan.mixedPrecision,
    ACCELERATE_USE_CPU: String(plan.useCpu),
    ACCELERATE_GRADIENT_ACCUMULATION_STEPS: String(plan.gradientAccumulationSteps),
  });
  Object.assign(env, strategyEnvironment(plan));
  // Without this, each rank's intra-op pool would use every core and the ranks would fight over them.
  if (base.OMP_NUM_THREADS === undefined || base.OMP_NUM_THREADS === "") {
    env.OMP_NUM_THREADS = String(Math.max(1, Math.floor(cpus / local)));
  }
  if (plan.gpuIds !== undefined && plan.gpuIds !== "all" && !plan.useCpu) env.CUDA_VISIBLE_DEVICES = plan.gpuIds;
  return env;
}
