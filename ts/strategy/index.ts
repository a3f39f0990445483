// Picks the strategy for a run from the process state and the Accelerator's options
// (HF's two dialects for ZeRO: `deepspeedPlugin.zeroStage` and `fsdpPlugin`).
import type { ProcessState } from "../state.js";
import { DataParallel } from "./ddp.js";
import { SingleProcess, type Strategy } from "./strategy.js";
import { ZeroRedundancy, type ZeroStageNumber } from "./zero.js";

export type { OptimizerHooks, Strategy } from "./strategy.js";

/** DeepSpeed's settings that apply here (HF's `DeepSpeedPlugin`). */
export interface DeepSpeedPlugin {
  /** 0 (data parallel), 1 (optimizer state partitioned) or 2 (and gradients). Stage 3 is not available yet. */
  zeroStage?: number;
}

/** FSDP's settings that apply here (HF's `FullyShardedDataParallelPlugin`, FSDP2). */
export interface FsdpPlugin {
  /** false shards gradients and optimizer state (ZeRO stage 2); true, FSDP's full shard (stage 3), is not available yet. */
  reshardAfterForward?: boolean;
}

export interface StrategyOptions {
  bucketBytes?: number;
  mixedPrecision?: string;
  deepspeedPlugin?: DeepSpeedPlugin;
  fsdpPlugin?: FsdpPlugin;
}

/** The ZeRO stage the options ask for (0: none), from the plugins or the launcher's environment. */
export function zeroStageOf(options: StrategyOptions, env: NodeJS.ProcessEnv = process.env): number {
  if (options.deepspeedPlugin && options.fsdpPlugin) throw new Error("Accelerator: give deepspeedPlugin or fsdpPlugin, not both");
  if (options.fsdpPlugin) {
    if (options.fsdpPlugin.reshardAfterForward ?? true) {
      throw new Error("Accelerator: fsdpPlugin with reshardAfterForward true (full shard, ZeRO stage 3) is not available yet; pass reshardAfterForward: false for stage 2");
    }
    return 2;
  }
  const fromEnv = env.ACCELERATE_USE_DEEPSPEED === "true" ? Number(env.ACCELERATE_DEEPSPEED_ZERO_STAGE ?? 2) : 0;
  const stage = options.deepspeedPlugin ? (options.deepspeedPlugin.zeroStage ?? 2) : fromEnv;
  if (![0, 1, 2].includes(stage)) {
    throw new Error(`Accelerator: deepspeedPlugin.zeroStage must be 0, 1 or 2 (stage 3 is not available yet), got ${stage}`);
  }
  return stage;
}

export function createStrategy(state: ProcessState, options: StrategyOptions): Strategy {
  const stage = zeroStageOf(options);
  const bucketBytes = options.bucketBytes ?? 25 * 2 ** 20;
  if (state.numProcesses === 1) return new SingleProcess(state);
  if (stage === 0) return new DataParallel(state, bucketBytes);
  return new ZeroRedundancy(state, bucketBytes, stage as ZeroStageNumber, options.mixedPrecision ?? "no");
}
