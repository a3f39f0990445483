// Picks the strategy for a run from the process state and the Accelerator's options
// (HF's two dialects for ZeRO: `deepspeedPlugin.zeroStage` and `fsdpPlugin`).
import type { ProcessState } from "../state.js";
import { DataParallel } from "./ddp.js";
import { SingleProcess, type Strategy } from "./strategy.js";
import { STRATEGY_ENV } from "../env-names.js";
import { readDeepSpeedConfig, readDeepSpeedConfigFile, type DeepSpeedConfigJson, type DeepSpeedSettings } from "./deepspeed-config.js";
import { ZeroRedundancy } from "./zero.js";
import { ZeroSharded, type Zero3Options } from "./zero3.js";
import {
  DEFAULT_PARAM_PERSISTENCE_THRESHOLD, DEFAULT_PREFETCH_BYTES, isNonNegativeInteger, isZeroStage, parseBooleanText, parseOffloadDevice, zeroChoiceProblem,
  type OffloadDevice, type ZeroStage,
} from "./zero-options.js";
import { describe, suggestName } from "../errors.js";

export type { OptimizerHooks, Strategy } from "./strategy.js";
export type { DeepSpeedConfigJson, DeepSpeedConfigValue, DeepSpeedSettings } from "./deepspeed-config.js";
export type { OffloadDevice, ZeroStage } from "./zero-options.js";

/** DeepSpeed's settings that apply here (HF's `DeepSpeedPlugin`). */
export interface DeepSpeedPlugin {
  /** 0 (data parallel), 1 (optimizer state partitioned), 2 (and gradients) or 3 (and parameters); default 2, or the DeepSpeed config's. */
  zeroStage?: number;
  /** A DeepSpeed config (ds_config.json contents, or its path): HF's `hf_ds_config`. */
  hfDsConfig?: DeepSpeedConfigJson | string;
  /** The path of a DeepSpeed config file (HF's `deepspeed_config_file`). */
  configFile?: string;
  /** Fills the config's "auto" `gradient_clipping` (HF's `gradient_clipping`). */
  gradientClipping?: number;
  /** "cpu": the optimizer state and step on the CPU (ZeRO-Offload; stages 1-3); "none" (default). HF's `offload_optimizer_device`. */
  offloadOptimizerDevice?: OffloadDevice;
  /** "cpu": the parameter shards on the CPU between uses (stage 3 only); "none" (default). HF's `offload_param_device`. */
  offloadParamDevice?: OffloadDevice;
  /** Stage 3: parameters with fewer elements stay whole on every process (DeepSpeed's `stage3_param_persistence_threshold`, default 100 000). */
  stage3ParamPersistenceThreshold?: number;
  /** Stage 3: how much to gather ahead of the module that needs it, in bytes (DeepSpeed's `stage3_prefetch_bucket_size`, default 50 000 000). */
  stage3PrefetchBucketSize?: number;
  /** HF's `zero3_init_flag`: accepted and not needed, since stage 3 shards the parameters when `prepare` sees the model. */
  zero3InitFlag?: boolean;
}

/** FSDP's settings that apply here (HF's `FullyShardedDataParallelPlugin`, FSDP2). */
export interface FsdpPlugin {
  /** 2 (FSDP2, the default); FSDP1 is not available. */
  fsdpVersion?: number;
  /** true (FSDP2's default, full shard): ZeRO stage 3; false: gradients and optimizer state sharded, parameters whole (stage 2). */
  reshardAfterForward?: boolean;
  /**
   * HF's `cpu_offload`: the optimizer state and step on the CPU, and with full shard the
   * parameter shards too. With `reshardAfterForward: false` the parameters are whole on every
   * device, so only the optimizer is offloaded (FSDP2 would offload its parameter shards).
   */
  cpuOffload?: boolean;
}

export interface StrategyOptions {
  bucketBytes?: number;
  mixedPrecision?: string;
  deepspeedPlugin?: DeepSpeedPlugin;
  fsdpPlugin?: FsdpPlugin;
}

type ZeroKey = "zeroStage" | "offloadOptimizer" | "offloadParameters" | "paramPersistenceThreshold" | "prefetchBytes";

/** What the strategy options (and the launcher's environment) ask of the run. */
export interface StrategyConfig extends Omit<DeepSpeedSettings, ZeroKey> {
  zeroStage: ZeroStage;
  /** Optimizer state and step on the CPU (stages 1-3). */
  offloadOptimizer: boolean;
  /** Parameter shards on the CPU between uses (stage 3 only). */
  offloadParameters: boolean;
  /** Stage 3: parameters with fewer elements stay whole on every process. */
  paramPersistenceThreshold: number;
  /** Stage 3: bytes of parameters gathered ahead of the module that needs them. */
  prefetchBytes: number;
}

const ENV_TRUE = (value: string | undefined): boolean => value !== undefined && ["true", "1", "yes"].includes(value.toLowerCase());

const envText = (env: NodeJS.ProcessEnv, name: string): string | undefined => {
  const value = env[name];
  return value === undefined || value === "" ? undefined : value;
};
const envBoolean = (env: NodeJS.ProcessEnv, name: string): boolean | undefined => {
  const text = envText(env, name);
  return text === undefined ? undefined : parseBooleanText(text, `Accelerator: ${name}`);
};

/** The FSDP plugin the launcher asked for through ACCELERATE_USE_FSDP (HF's variables), if any. */
function fsdpPluginFromEnv(env: NodeJS.ProcessEnv): FsdpPlugin | undefined {
  if (!ENV_TRUE(env[STRATEGY_ENV.useFsdp])) return undefined;
  const version = envText(env, STRATEGY_ENV.fsdpVersion);
  if (version !== undefined && version.trim() !== "2") {
    throw new Error(`Accelerator: ${STRATEGY_ENV.fsdpVersion} must be 2 (FSDP1 is not available), got ${JSON.stringify(version)}`);
  }
  return {
    fsdpVersion: 2,
    reshardAfterForward: envBoolean(env, STRATEGY_ENV.fsdpReshardAfterForward),
    cpuOffload: envBoolean(env, STRATEGY_ENV.fsdpOffloadParams),
  };
}

/** The DeepSpeed plugin the launcher asked for through ACCELERATE_USE_DEEPSPEED (HF's variables), if any. */
function deepspeedPluginFromEnv(env: NodeJS.ProcessEnv): DeepSpeedPlugin | undefined {
  if (!ENV_TRUE(env[STRATEGY_ENV.useDeepspeed])) return undefined;
  const stage = envText(env, STRATEGY_ENV.zeroStage);
  if (stage !== undefined && !/^\s*\d+\s*$/.test(stage)) {
    throw new Error(`Accelerator: ${STRATEGY_ENV.zeroStage} must be 0, 1, 2 or 3, got ${JSON.stringify(stage)}`);
  }
  const clipping = envText(env, STRATEGY_ENV.gradientClipping);
  // HF writes devices in lower case; they are checked, under these variables' names, with the plugin's.
  const device = (name: string): OffloadDevice | undefined => envText(env, name)?.toLowerCase() as OffloadDevice | undefined;
  return {
    zeroStage: stage === undefined ? undefined : Number(stage),
    configFile: envText(env, STRATEGY_ENV.deepspeedConfigFile),
    gradientClipping: clipping === undefined || clipping === "none" ? undefined : Number(clipping),
    offloadOptimizerDevice: device(STRATEGY_ENV.offloadOptimizerDevice),
    offloadParamDevice: device(STRATEGY_ENV.offloadParamDevice),
    zero3InitFlag: envBoolean(env, STRATEGY_ENV.zero3Init),
  };
}

/** The launcher's variable for each DeepSpeed plugin field it sets, to name in messages. */
const DEEPSPEED_ENV_OF: Partial<Record<keyof DeepSpeedPlugin, string>> = {
  zeroStage: STRATEGY_ENV.zeroStage,
  configFile: STRATEGY_ENV.deepspeedConfigFile,
  gradientClipping: STRATEGY_ENV.gradientClipping,
  offloadOptimizerDevice: STRATEGY_ENV.offloadOptimizerDevice,
  offloadParamDevice: STRATEGY_ENV.offloadParamDevice,
  zero3InitFlag: STRATEGY_ENV.zero3Init,
};

const DEFAULTS = { paramPersistenceThreshold: DEFAULT_PARAM_PERSISTENCE_THRESHOLD, prefetchBytes: DEFAULT_PREFETCH_BYTES };

function fsdpConfig(fsdp: FsdpPlugin, fromEnv: boolean): StrategyConfig {
  const name = (field: keyof FsdpPlugin): string =>
    fromEnv ? { fsdpVersion: STRATEGY_ENV.fsdpVersion, reshardAfterForward: STRATEGY_ENV.fsdpReshardAfterForward, cpuOffload: STRATEGY_ENV.fsdpOffloadParams }[field] : `fsdpPlugin.${field}`;
  if ((fsdp.fsdpVersion ?? 2) !== 2) throw new Error(`Accelerator: ${name("fsdpVersion")} must be 2 (FSDP1 is not available), got ${describe(fsdp.fsdpVersion)}`);
  for (const field of ["reshardAfterForward", "cpuOffload"] as const) {
    if (fsdp[field] !== undefined && typeof fsdp[field] !== "boolean") throw new Error(`Accelerator: ${name(field)} must be true or false, got ${describe(fsdp[field])}`);
  }
  const fullShard = fsdp.reshardAfterForward ?? true;
  const offload = fsdp.cpuOffload ?? false;
  // FSDP2 shards every parameter, however small: no persistence threshold in its dialect.
  return { zeroStage: fullShard ? 3 : 2, offloadOptimizer: offload, offloadParameters: offload && fullShard, ...DEFAULTS, paramPersistenceThreshold: 0, notUsed: [] };
}

/**
 * A script's own DeepSpeed plugin, its unset fields filled from the launcher's (HF's
 * `DeepSpeedPlugin` reads `ACCELERATE_DEEPSPEED_*` for the fields left None). A config given
 * in the script wins over the launcher's config file.
 */
function withLauncherDefaults(plugin: DeepSpeedPlugin, launcher: DeepSpeedPlugin | undefined): DeepSpeedPlugin {
  if (launcher === undefined) return plugin;
  const given = Object.fromEntries(Object.entries(plugin).filter(([, v]) => v !== undefined)) as DeepSpeedPlugin;
  const filled: DeepSpeedPlugin = { ...launcher, ...given };
  if (given.hfDsConfig !== undefined && given.configFile === undefined) delete filled.configFile;
  return filled;
}

const DEEPSPEED_PLUGIN_KEYS: readonly (keyof DeepSpeedPlugin)[] = [
  "zeroStage", "hfDsConfig", "configFile", "gradientClipping", "offloadOptimizerDevice", "offloadParamDevice",
  "stage3ParamPersistenceThreshold", "stage3PrefetchBucketSize", "zero3InitFlag",
];
const FSDP_PLUGIN_KEYS: readonly (keyof FsdpPlugin)[] = ["fsdpVersion", "reshardAfterForward", "cpuOffload"];

/** A plugin given as an object, with only keys it knows (a misspelled one would be ignored otherwise). */
function checkPluginKeys(plugin: unknown, known: readonly string[], name: string): void {
  if (plugin === null || typeof plugin !== "object" || Array.isArray(plugin)) throw new Error(`Accelerator: ${name} must be an object, got ${describe(plugin)}`);
  for (const key of Object.keys(plugin)) {
    if (known.includes(key)) continue;
    const suggestion = suggestName(key, [...known]);
    throw new Error(`Accelerator: ${name} has no option "${key}"${suggestion ? ` (did you mean "${suggestion}"?)` : ""}; its options are: ${known.join(", ")}`);
  }
}

/** The ZeRO stage and DeepSpeed settings the options ask for, from the plugins or the launcher's environment. */
export function strategyConfigOf(options: StrategyOptions, env: NodeJS.ProcessEnv = process.env): StrategyConfig {
  if (options.deepspeedPlugin && options.fsdpPlugin) throw new Error("Accelerator: give deepspeedPlugin or fsdpPlugin, not both");
  if (options.deepspeedPlugin !== undefined) checkPluginKeys(options.deepspeedPlugin, DEEPSPEED_PLUGIN_KEYS, "deepspeedPlugin");
  if (options.fsdpPlugin !== undefined) checkPluginKeys(options.fsdpPlugin, FSDP_PLUGIN_KEYS, "fsdpPlugin");
  if (options.fsdpPlugin) return fsdpConfig(options.fsdpPlugin, false);
  if (options.deepspeedPlugin) return deepspeedConfig(withLauncherDefaults(options.deepspeedPlugin, deepspeedPluginFromEnv(env)), false);
  // The launcher's choice, through HF's variables.
  const fsdp = fsdpPluginFromEnv(env);
  if (fsdp) return fsdpConfig(fsdp, true);
  const deepspeed = deepspeedPluginFromEnv(env);
  if (deepspeed) return deepspeedConfig(deepspeed, true);
  return { zeroStage: 0, offloadOptimizer: false, offloadParameters: false, ...DEFAULTS, notUsed: [] };
}

/** The DeepSpeed plugin's settings merged with its DeepSpeed config's; `fromEnv` names the launcher's variables in messages. */
function deepspeedConfig(plugin: DeepSpeedPlugin, fromEnv: boolean): StrategyConfig {
  const name = (field: keyof DeepSpeedPlugin): string => (fromEnv ? (DEEPSPEED_ENV_OF[field] ?? `deepspeedPlugin.${field}`) : `deepspeedPlugin.${field}`);
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
  if (plugin.zeroStage !== undefined && !isZeroStage(plugin.zeroStage)) {
    throw new Error(`Accelerator: ${name("zeroStage")} must be 0, 1, 2 or 3, got ${describe(plugin.zeroStage)}`);
  }
  const offloadOf = (field: "offloadOptimizerDevice" | "offloadParamDevice"): boolean | undefined =>
    plugin[field] === undefined ? undefined : parseOffloadDevice(plugin[field], `Accelerator: ${name(field)}`);
  const sizeOf = (field: "stage3ParamPersistenceThreshold" | "stage3PrefetchBucketSize"): number | undefined => {
    const value = plugin[field];
    if (value !== undefined && !isNonNegativeInteger(value)) throw new Error(`Accelerator: ${name(field)} must be a non-negative integer, got ${describe(value)}`);
    return value;
  };
  if (plugin.zero3InitFlag !== undefined && typeof plugin.zero3InitFlag !== "boolean") {
    throw new Error(`Accelerator: ${name("zero3InitFlag")} must be true or false, got ${describe(plugin.zero3InitFlag)}`);
  }
  /** The plugin's value or the config's (which must agree when both are given), with the name to blame. */
  const once = <T>(
    field: keyof DeepSpeedPlugin,
    pluginValue: T | undefined,
    key: string,
    fileValue: T | undefined,
    show: (value: T) => string = (value) => JSON.stringify(value),
  ): { value: T | undefined; name: string } => {
    if (pluginValue !== undefined && fileValue !== undefined && pluginValue !== fileValue) {
      throw new Error(`Accelerator: ${name(field)} is ${show(pluginValue)} but the DeepSpeed config's ${key} is ${show(fileValue)}; give it once`);
    }
    return pluginValue !== undefined ? { value: pluginValue, name: name(field) } : { value: fileValue, name: `the DeepSpeed config's ${key}` };
  };
  const stage = once("zeroStage", plugin.zeroStage as ZeroStage | undefined, "zero_optimization.stage", file.zeroStage);
  const device = (offload: boolean): string => (offload ? '"cpu"' : '"none"');
  const offloadOptimizer = once("offloadOptimizerDevice", offloadOf("offloadOptimizerDevice"), "zero_optimization.offload_optimizer.device", file.offloadOptimizer, device);
  const offloadParameters = once("offloadParamDevice", offloadOf("offloadParamDevice"), "zero_optimization.offload_param.device", file.offloadParameters, device);
  const threshold = once("stage3ParamPersistenceThreshold", sizeOf("stage3ParamPersistenceThreshold"), "zero_optimization.stage3_param_persistence_threshold", file.paramPersistenceThreshold);
  const prefetch = once("stage3PrefetchBucketSize", sizeOf("stage3PrefetchBucketSize"), "zero_optimization.stage3_prefetch_bucket_size", file.prefetchBytes);
  const zeroStage = stage.value ?? 2;
  const problem = zeroChoiceProblem({
    stage: { value: zeroStage, name: stage.value === undefined ? "the ZeRO stage (default 2)" : stage.name },
    offloadOptimizer: { value: offloadOptimizer.value ?? false, name: `${offloadOptimizer.name} "cpu"` },
    offloadParameters: { value: offloadParameters.value ?? false, name: `${offloadParameters.name} "cpu"` },
  });
  if (problem !== undefined) throw new Error(`Accelerator: ${problem}`);
  if (plugin.gradientClipping !== undefined && !(plugin.gradientClipping >= 0)) {
    throw new Error(`Accelerator: ${name("gradientClipping")} must be a non-negative number, got ${describe(plugin.gradientClipping)}`);
  }
  const clipping = file.gradientClipping ?? (plugin.gradientClipping || undefined);
  return {
    ...file,
    zeroStage,
    offloadOptimizer: offloadOptimizer.value ?? false,
    offloadParameters: offloadParameters.value ?? false,
    paramPersistenceThreshold: threshold.value ?? DEFAULT_PARAM_PERSISTENCE_THRESHOLD,
    prefetchBytes: prefetch.value ?? DEFAULT_PREFETCH_BYTES,
    gradientClipping: clipping,
  };
}

/** The ZeRO stage the options ask for (0: none), from the plugins or the launcher's environment. */
export function zeroStageOf(options: StrategyOptions, env: NodeJS.ProcessEnv = process.env): number {
  return strategyConfigOf(options, env).zeroStage;
}

/** What the ZeRO strategies take from the config. */
function zeroOptions(config: StrategyConfig): Zero3Options {
  return {
    persistBelow: config.paramPersistenceThreshold,
    offloadOptimizer: config.offloadOptimizer,
    offloadParameters: config.offloadParameters,
    prefetchBytes: config.prefetchBytes,
  };
}

export function createStrategy(state: ProcessState, options: StrategyOptions, config: StrategyConfig = strategyConfigOf(options)): Strategy {
  const bucketBytes = options.bucketBytes ?? 25 * 2 ** 20;
  const stage = config.zeroStage;
  const zero = zeroOptions(config);
  // Stage 3 shards on any number of processes; on one, sharding is moot but offload is not.
  if (stage === 3) return new ZeroSharded(state, 3, zero);
  // Stage 2: the same sharder with every parameter whole, so only gradients and optimizer state
  // are partitioned (and, on one process, only the optimizer offloaded).
  const stage2 = (): Strategy => new ZeroSharded(state, 2, { ...zero, persistBelow: Infinity });
  if (state.numProcesses === 1) return stage > 0 && zero.offloadOptimizer ? stage2() : new SingleProcess(state);
  if (stage === 0) return new DataParallel(state, bucketBytes);
  return stage === 2 ? stage2() : new ZeroRedundancy(state, bucketBytes, zero.offloadOptimizer);
}
