// Picks the strategy for a run from the process state and the Accelerator's options
// (HF's two dialects for ZeRO: `deepspeedPlugin.zeroStage` and `fsdpPlugin`).
import type { ProcessState } from "../state.js";
import { DataParallel } from "./ddp.js";
import { SingleProcess, type Strategy } from "./strategy.js";
import { STRATEGY_ENV } from "../env-names.js";
import { readDeepSpeedConfig, readDeepSpeedConfigFile, type DeepSpeedConfigJson, type DeepSpeedSettings } from "./deepspeed-config.js";
import { ZeroRedundancy, type ZeroStageNumber } from "./zero.js";
import { ZeroSharded, type Zero3Options } from "./zero3.js";

export type { OptimizerHooks, Strategy } from "./strategy.js";
export type { DeepSpeedConfigJson, DeepSpeedConfigValue, DeepSpeedSettings } from "./deepspeed-config.js";

/** DeepSpeed's settings that apply here (HF's `DeepSpeedPlugin`). */
export interface DeepSpeedPlugin {
  /** 0 (data parallel), 1 (optimizer state partitioned) or 2 (and gradients). Stage 3 is not available yet. */
  zeroStage?: number;
  /** A DeepSpeed config (ds_config.json contents, or its path): HF's `hf_ds_config`. */
  hfDsConfig?: DeepSpeedConfigJson | string;
  /** The path of a DeepSpeed config file (HF's `deepspeed_config_file`). */
  configFile?: string;
  /** Fills the config's "auto" `gradient_clipping` (HF's `gradient_clipping`). */
  gradientClipping?: number;
}

/** FSDP's settings that apply here (HF's `FullyShardedDataParallelPlugin`, FSDP2). */
export interface FsdpPlugin {
  /** 2 (FSDP2, the default); FSDP1 is not available. */
  fsdpVersion?: number;
  /** false shards gradients and optimizer state (ZeRO stage 2); true, FSDP's full shard (stage 3), is not available yet. */
  reshardAfterForward?: boolean;
}

export interface StrategyOptions {
  bucketBytes?: number;
  mixedPrecision?: string;
  deepspeedPlugin?: DeepSpeedPlugin;
  fsdpPlugin?: FsdpPlugin;
}

/** What the strategy options (and the launcher's environment) ask of the run. */
export interface StrategyConfig extends Omit<DeepSpeedSettings, "zeroStage"> {
  zeroStage: number;
}

const ENV_TRUE = (value: string | undefined): boolean => value !== undefined && ["true", "1", "yes"].includes(value.toLowerCase());

/** The FSDP plugin the launcher asked for through ACCELERATE_USE_FSDP (HF's variables), if any. */
function fsdpPluginFromEnv(env: NodeJS.ProcessEnv): FsdpPlugin | undefined {
  if (!ENV_TRUE(env[STRATEGY_ENV.useFsdp])) return undefined;
  const reshard = env[STRATEGY_ENV.fsdpReshardAfterForward];
  return {
    fsdpVersion: Number(env[STRATEGY_ENV.fsdpVersion] ?? 2),
    reshardAfterForward: reshard === undefined ? undefined : ENV_TRUE(reshard),
  };
}

/** The DeepSpeed plugin the launcher asked for through ACCELERATE_USE_DEEPSPEED (HF's variables), if any. */
function deepspeedPluginFromEnv(env: NodeJS.ProcessEnv): DeepSpeedPlugin | undefined {
  if (!ENV_TRUE(env[STRATEGY_ENV.useDeepspeed])) return undefined;
  const stage = env[STRATEGY_ENV.zeroStage];
  const clipping = env[STRATEGY_ENV.gradientClipping];
  return {
    zeroStage: stage === undefined || stage === "" ? undefined : Number(stage),
    configFile: env[STRATEGY_ENV.deepspeedConfigFile] || undefined,
    gradientClipping: clipping === undefined || clipping === "" || clipping === "none" ? undefined : Number(clipping),
  };
}

/** The ZeRO stage and DeepSpeed settings the options ask for, from the plugins or the launcher's environment. */
export function strategyConfigOf(options: StrategyOptions, env: NodeJS.ProcessEnv = process.env): StrategyConfig {
  if (options.deepspeedPlugin && options.fsdpPlugin) throw new Error("Accelerator: give deepspeedPlugin or fsdpPlugin, not both");
  const fsdp = options.fsdpPlugin ?? (options.deepspeedPlugin ? undefined : fsdpPluginFromEnv(env));
  if (fsdp) {
    if ((fsdp.fsdpVersion ?? 2) !== 2) throw new Error(`Accelerator: fsdpPlugin.fsdpVersion must be 2 (FSDP1 is not available), got ${fsdp.fsdpVersion}`);
    if (fsdp.reshardAfterForward ?? true) {
      throw new Error("Accelerator: fsdpPlugin with reshardAfterForward true (full shard, ZeRO stage 3) is not available yet; pass reshardAfterForward: false for stage 2");
    }
    return { zeroStage: 2, notUsed: [] };
  }
  const plugin = options.deepspeedPlugin ?? deepspeedPluginFromEnv(env);
  if (!plugin) return { zeroStage: 0, notUsed: [] };
  if (plugin.hfDsConfig !== undefined && plugin.configFile !== undefined) {
    throw new Error("Accelerator: deepspeedPlugin: give hfDsConfig or configFile, not both");
  }
  const source = plugin.configFile ?? plugin.hfDsConfig;
  const file: DeepSpeedSettings =
    source === undefined
      ? { notUsed: [] }
      : typeof source === "string"
        ? readDeepSpeedConfigFile(source)
        : readDeepSpeedConfig(source, "deepspeedPlugin.hfDsConfig");
  if (plugin.zeroStage !== undefined && file.zeroStage !== undefined && plugin.zeroStage !== file.zeroStage) {
    throw new Error(`Accelerator: deepspeedPlugin.zeroStage is ${plugin.zeroStage} but the DeepSpeed config's zero_optimization.stage is ${file.zeroStage}; give it once`);
  }
  const stage = plugin.zeroStage ?? file.zeroStage ?? 2;
  if (![0, 1, 2, 3].includes(stage)) {
    throw new Error(`Accelerator: deepspeedPlugin.zeroStage must be 0, 1 or 2 (stage 3 is not available yet), got ${stage}`);
  }
  if (plugin.gradientClipping !== undefined && !(plugin.gradientClipping >= 0)) {
    throw new Error(`Accelerator: deepspeedPlugin.gradientClipping must be a non-negative number, got ${plugin.gradientClipping}`);
  }
  const clipping = file.gradientClipping ?? (plugin.gradientClipping || undefined);
  return { ...file, zeroStage: stage, gradientClipping: clipping };
}

/** The ZeRO stage the options ask for (0: none), from the plugins or the launcher's environment. */
export function zeroStageOf(options: StrategyOptions, env: NodeJS.ProcessEnv = process.env): number {
  return strategyConfigOf(options, env).zeroStage;
}

/** What ZeRO-3 takes from the config (the DeepSpeed/FSDP fields, where the config gives them). */
function zero3Options(config: StrategyConfig): Zero3Options {
  const given = config as StrategyConfig & Partial<{ offloadOptimizer: boolean; offloadParameters: boolean; paramPersistenceThreshold: number }>;
  return {
    persistBelow: given.paramPersistenceThreshold ?? 100_000,
    offloadOptimizer: given.offloadOptimizer ?? false,
    offloadParameters: given.offloadParameters ?? false,
  };
}

export function createStrategy(state: ProcessState, options: StrategyOptions, config: StrategyConfig = strategyConfigOf(options)): Strategy {
  const bucketBytes = options.bucketBytes ?? 25 * 2 ** 20;
  const stage = config.zeroStage;
  if (state.numProcesses === 1) return new SingleProcess(state);
  if (stage === 0) return new DataParallel(state, bucketBytes);
  const zero3 = zero3Options(config);
  if (stage === 3) return new ZeroSharded(state, zero3);
  return new ZeroRedundancy(state, bucketBytes, stage as ZeroStageNumber, zero3.offloadOptimizer);
}
