// Reads a DeepSpeed JSON config (ds_config.json) for the keys accelerate-ts applies, fills
// "auto" values from the run as HF's DeepSpeed integration does, and names every key it
// does not apply: an Error when ignoring it would change training, a "not used" line otherwise.
import { readFileSync } from "node:fs";
import { suggestName } from "../errors.js";
import type { GradScalerOptions } from "../precision.js";
import { isNonNegativeInteger, isZeroStage, parseOffloadDevice, zeroChoiceProblem, type ZeroStage } from "./zero-options.js";

/** A DeepSpeed config as JSON (DeepSpeed's snake_case keys); numbers may be "auto". */
export type DeepSpeedConfigJson = { [key: string]: DeepSpeedConfigValue };
export type DeepSpeedConfigValue = string | number | boolean | null | DeepSpeedConfigValue[] | DeepSpeedConfigJson;

/** What a DeepSpeed config asks of this run; undefined where it leaves the choice to the run ("auto" or absent). */
export interface DeepSpeedSettings {
  zeroStage?: ZeroStage;
  /** Optimizer state and step on the CPU: `zero_optimization.offload_optimizer.device` "cpu" (or the older `cpu_offload: true`). */
  offloadOptimizer?: boolean;
  /** Stage 3's parameter shards on the CPU between uses: `zero_optimization.offload_param.device` "cpu". */
  offloadParameters?: boolean;
  /** Stage 3: parameters with fewer elements stay whole on every process (`stage3_param_persistence_threshold`). */
  paramPersistenceThreshold?: number;
  /** Stage 3: how much to gather ahead of the module that needs it (`stage3_prefetch_bucket_size`, taken as bytes). */
  prefetchBytes?: number;
  gradientAccumulationSteps?: number;
  /** Max global gradient norm, applied inside the prepared optimizer's step (as DeepSpeed's engine does). */
  gradientClipping?: number;
  mixedPrecision?: "no" | "fp16" | "bf16";
  gradScaler?: GradScalerOptions;
  trainMicroBatchSizePerGpu?: number;
  trainBatchSize?: number;
  /** Keys read but not applied, by dotted name, each with why. */
  notUsed: string[];
}

const isMapping = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** DeepSpeed keys (docs/_pages/config-json.md) that accelerate-ts reads but does not apply, with why. */
const NOT_APPLIED_TOP: Record<string, string> = {
  optimizer: "the optimizer passed to prepare() is used",
  scheduler: "the scheduler passed to prepare() is used",
  steps_per_print: "logging is the trackers'",
  wall_clock_breakdown: "no timers",
  dump_state: "no timers",
  prescale_gradients: "gradients are averaged once",
  gradient_predivide_factor: "gradients are averaged once",
  communication_data_type: "gradients are reduced in their own dtype",
  sparse_gradients: "no sparse gradients",
  zero_allow_untested_optimizer: "ZeRO accepts optim's optimizers only",
  zero_force_ds_cpu_optimizer: "with offload, the optimizer passed to prepare() steps on the CPU",
  amp: "use fp16 or bf16",
  activation_checkpointing: "no activation checkpointing",
  flops_profiler: "no profiler",
  tensorboard: "use logWith",
  wandb: "use logWith",
  csv_monitor: "use logWith",
  comms_logger: "no communication logger",
  aio: "no NVMe offload",
  checkpoint: "saveState's layout is used",
  data_types: "gradients are accumulated in the parameters' dtype",
  elasticity: "no elastic training",
  autotuning: "no autotuning",
  compression_training: "no compression",
  memory_breakdown: "use accelerator.stateBytes()",
};
const NOT_APPLIED_ZERO: Record<string, string> = {
  allgather_partitions: "parameters are all-gathered after each step",
  allgather_bucket_size: "stage 1 gathers each param group at once, stages 2 and 3 each module",
  overlap_comm: "stages 2 and 3 reduce during backward and prefetch gathers; always on",
  reduce_scatter: "stages 2 and 3 always reduce-scatter",
  reduce_bucket_size: "gradients are reduce-scattered module by module",
  use_multi_rank_bucket_allreduce: "use the Accelerator's bucketBytes",
  contiguous_gradients: "gradient shards are always contiguous",
  round_robin_gradients: "stages 2 and 3 cut every parameter into one shard per process",
  sub_group_size: "the optimizer steps all of a process's shards at once",
  load_from_fp32_weights: "checkpoints hold fp32 state",
  elastic_checkpoint: "checkpoints resume on any number of processes",
  ignore_unused_parameters: "unused parameters have zero gradients",
  legacy_stage1: "there is one stage 1",
  zero_hpz_partition_size: "no ZeRO++",
  zero_quantized_weights: "no ZeRO++",
  zero_quantized_nontrainable_weights: "no ZeRO++",
  zero_quantized_gradients: "no ZeRO++",
  zeropp_loco_param: "no ZeRO++",
  mics_shard_size: "no MiCS",
  mics_hierarchical_params_gather: "no MiCS",
  memory_efficient_linear: "linear layers are not replaced",
  cpu_offload_use_pin_memory: "host copies are always pinned on CUDA",
  stage3_model_persistence_threshold: "only stage3_param_persistence_threshold keeps parameters whole",
  stage3_max_live_parameters: "parameters are released after each module",
  stage3_max_reuse_distance: "parameters are released after each module",
  stage3_gather_16bit_weights_on_model_save: "saveModel and getStateDict gather whole parameters",
  stage3_gather_fp16_weights_on_model_save: "saveModel and getStateDict gather whole parameters",
  stage3_module_granularity_threshold: "parameters are gathered module by module",
  stage3_use_all_reduce_for_fetch_params: "parameters are gathered with all-gather",
  stage3_allgather_sequential: "parameters are gathered module by module",
  leaf_module: "parameters are gathered module by module",
  override_module_apply: "parameters are sharded at prepare, not at construction",
  pipeline_loading_checkpoint: "checkpoints are loaded whole, then sliced",
  log_trace_cache_warnings: "no trace cache",
  enable_sanity_checks: "no sanity checks",
};
const APPLIED_ZERO = ["stage", "offload_optimizer", "offload_param", "cpu_offload", "cpu_offload_param", "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size"];
const NO_NVME = "no NVMe offload";
const OFFLOAD_OPTIMIZER_NOT_APPLIED: Record<string, string> = {
  pin_memory: "host copies are always pinned on CUDA",
  nvme_path: NO_NVME,
  buffer_count: NO_NVME,
  pipeline: NO_NVME,
  pipeline_read: NO_NVME,
  pipeline_write: NO_NVME,
  fast_init: NO_NVME,
  ratio: "the whole optimizer step runs on the CPU",
  super_offload: "no Superchip offload",
  cpuadam_cores_perc: "the CPU step uses libtorch's threads",
};
const OFFLOAD_PARAM_NOT_APPLIED: Record<string, string> = {
  pin_memory: "host copies are always pinned on CUDA",
  nvme_path: NO_NVME,
  buffer_count: NO_NVME,
  buffer_size: NO_NVME,
  max_in_cpu: NO_NVME,
};
const FP16_NOT_APPLIED: Record<string, string> = {
  auto_cast: "autocast is the Accelerator's",
  hysteresis: "one overflow backs the scale off",
  consecutive_hysteresis: "one overflow backs the scale off",
  min_loss_scale: "the scale is not bounded below",
};
const APPLIED_TOP = ["zero_optimization", "gradient_accumulation_steps", "gradient_clipping", "bf16", "fp16", "train_micro_batch_size_per_gpu", "train_batch_size"];
const APPLIED_FP16 = ["enabled", "loss_scale", "initial_scale_power", "loss_scale_window"];

function unknownKey(where: string, key: string, known: string[]): Error {
  const suggestion = suggestName(key, known);
  return new Error(`${where}: unknown key "${key}"${suggestion ? ` (did you mean "${suggestion}"?)` : ""}`);
}

const AUTO = "auto";

function numberOrAuto(where: string, key: string, value: unknown, check: (n: number) => boolean, what: string): number | undefined {
  if (value === AUTO) return undefined;
  if (typeof value === "number" && check(value)) return value;
  throw new Error(`${where}: "${key}" must be ${what} or "auto", got ${JSON.stringify(value)}`);
}
const positiveInteger = (n: number): boolean => Number.isInteger(n) && n >= 1;

function enabledOf(where: string, key: string, section: unknown): boolean | undefined {
  if (!isMapping(section)) throw new Error(`${where}: "${key}" must be a mapping such as { "enabled": true }, got ${JSON.stringify(section)}`);
  const enabled = section.enabled ?? false;
  if (enabled === AUTO) return undefined;
  if (typeof enabled !== "boolean") throw new Error(`${where}: "${key}.enabled" must be true, false or "auto", got ${JSON.stringify(enabled)}`);
  return enabled;
}

/** Validates `raw` (a parsed ds_config.json); `source` names it in messages. */
export function readDeepSpeedConfig(raw: unknown, source: string): DeepSpeedSettings {
  const where = `DeepSpeed config ${source}`;
  if (!isMapping(raw)) throw new Error(`${where}: expected a JSON object, got ${JSON.stringify(raw)}`);
  const settings: DeepSpeedSettings = { notUsed: [] };
  const notUsed = (key: string, why: string): void => void settings.notUsed.push(`${key} (${why})`);
  for (const [key, value] of Object.entries(raw)) {
    if (Object.hasOwn(NOT_APPLIED_TOP, key)) notUsed(key, NOT_APPLIED_TOP[key]);
    else if (!APPLIED_TOP.includes(key)) throw unknownKey(where, key, [...APPLIED_TOP, ...Object.keys(NOT_APPLIED_TOP)]);
  }
  if (raw.gradient_accumulation_steps !== undefined) {
    settings.gradientAccumulationSteps = numberOrAuto(where, "gradient_accumulation_steps", raw.gradient_accumulation_steps, positiveInteger, "a positive integer");
  }
  if (raw.gradient_clipping !== undefined) {
    const clip = numberOrAuto(where, "gradient_clipping", raw.gradient_clipping, (n) => n >= 0, "a non-negative number");
    // DeepSpeed's 0 means no clipping.
    if (clip !== undefined && clip > 0) settings.gradientClipping = clip;
  }
  if (raw.train_micro_batch_size_per_gpu !== undefined) {
    settings.trainMicroBatchSizePerGpu = numberOrAuto(where, "train_micro_batch_size_per_gpu", raw.train_micro_batch_size_per_gpu, positiveInteger, "a positive integer");
  }
  if (raw.train_batch_size !== undefined) {
    settings.trainBatchSize = numberOrAuto(where, "train_batch_size", raw.train_batch_size, positiveInteger, "a positive integer");
  }
  const bf16 = raw.bf16 === undefined ? false : enabledOf(where, "bf16", raw.bf16);
  const fp16 = raw.fp16 === undefined ? false : enabledOf(where, "fp16", raw.fp16);
  if (bf16 && fp16) throw new Error(`${where}: "bf16.enabled" and "fp16.enabled" are both true; enable one`);
  if (bf16 === true) settings.mixedPrecision = "bf16";
  else if (fp16 === true) settings.mixedPrecision = "fp16";
  else if (bf16 === false && fp16 === false && (raw.bf16 !== undefined || raw.fp16 !== undefined)) settings.mixedPrecision = "no";
  if (isMapping(raw.bf16)) {
    for (const key of Object.keys(raw.bf16)) if (key !== "enabled") notUsed(`bf16.${key}`, "bf16 is autocast with fp32 master weights");
  }
  if (isMapping(raw.fp16)) settings.gradScaler = readFp16(where, raw.fp16, notUsed);
  if (raw.zero_optimization !== undefined) readZero(where, raw.zero_optimization, settings, notUsed);
  return settings;
}

function readFp16(where: string, fp16: Record<string, unknown>, notUsed: (key: string, why: string) => void): GradScalerOptions {
  const scaler: GradScalerOptions = {};
  for (const [key, value] of Object.entries(fp16)) {
    if (Object.hasOwn(FP16_NOT_APPLIED, key)) notUsed(`fp16.${key}`, FP16_NOT_APPLIED[key]);
    else if (!APPLIED_FP16.includes(key)) throw unknownKey(`${where}: fp16`, key, [...APPLIED_FP16, ...Object.keys(FP16_NOT_APPLIED)]);
    else if (key === "loss_scale" && value !== 0 && value !== AUTO) {
      throw new Error(`${where}: "fp16.loss_scale" ${JSON.stringify(value)} asks for a static loss scale, which is not available; use 0 (dynamic scaling)`);
    } else if (key === "initial_scale_power" && value !== AUTO) {
      scaler.initScale = 2 ** (numberOrAuto(where, "fp16.initial_scale_power", value, Number.isInteger, "an integer") ?? 16);
    } else if (key === "loss_scale_window" && value !== AUTO) {
      scaler.growthInterval = numberOrAuto(where, "fp16.loss_scale_window", value, positiveInteger, "a positive integer");
    }
  }
  return scaler;
}

/** An `offload_optimizer` / `offload_param` mapping: its device (undefined when absent or "auto"), its other keys named as not used. */
function readOffload(
  where: string,
  name: string,
  section: unknown,
  notApplied: Record<string, string>,
  notUsed: (key: string, why: string) => void,
): boolean | undefined {
  if (section === null) return undefined;
  if (!isMapping(section)) throw new Error(`${where}: "${name}" must be a mapping such as { "device": "cpu" }, got ${JSON.stringify(section)}`);
  let device: boolean | undefined;
  for (const [key, value] of Object.entries(section)) {
    if (key === "device") {
      // HF fills an "auto" device from the plugin (offloadOptimizerDevice / offloadParamDevice).
      if (value !== AUTO && value !== null) device = parseOffloadDevice(value, `${where}: "${name}.device"`);
    } else if (Object.hasOwn(notApplied, key)) {
      // HF's plugin writes `"nvme_path": null` when the device is not NVMe.
      if (value !== null) notUsed(`${name}.${key}`, notApplied[key]);
    } else {
      throw unknownKey(`${where}: ${name}`, key, ["device", ...Object.keys(notApplied)]);
    }
  }
  return device;
}

/** DeepSpeed's older boolean spelling (`cpu_offload`, `cpu_offload_param`) of an offload; refused next to the newer one. */
function readOldOffload(where: string, zero: Record<string, unknown>, oldKey: string, newKey: string): boolean | undefined {
  const value = zero[oldKey];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") throw new Error(`${where}: "zero_optimization.${oldKey}" must be true or false, got ${JSON.stringify(value)}`);
  if (zero[newKey] !== undefined && zero[newKey] !== null) {
    throw new Error(`${where}: give "zero_optimization.${newKey}" or its older spelling "zero_optimization.${oldKey}", not both`);
  }
  return value;
}

function readZero(where: string, zero: unknown, settings: DeepSpeedSettings, notUsed: (key: string, why: string) => void): void {
  if (!isMapping(zero)) throw new Error(`${where}: "zero_optimization" must be a mapping, got ${JSON.stringify(zero)}`);
  for (const [key, value] of Object.entries(zero)) {
    const name = `zero_optimization.${key}`;
    if (key === "stage") {
      if (value === AUTO) continue;
      if (!isZeroStage(value)) throw new Error(`${where}: "${name}" must be 0, 1, 2 or 3, got ${JSON.stringify(value)}`);
      settings.zeroStage = value;
    } else if (key === "offload_optimizer") {
      settings.offloadOptimizer = readOffload(where, name, value, OFFLOAD_OPTIMIZER_NOT_APPLIED, notUsed);
    } else if (key === "offload_param") {
      settings.offloadParameters = readOffload(where, name, value, OFFLOAD_PARAM_NOT_APPLIED, notUsed);
    } else if (key === "cpu_offload") {
      settings.offloadOptimizer = readOldOffload(where, zero, key, "offload_optimizer");
    } else if (key === "cpu_offload_param") {
      settings.offloadParameters = readOldOffload(where, zero, key, "offload_param");
    } else if (key === "stage3_param_persistence_threshold") {
      settings.paramPersistenceThreshold = numberOrAuto(where, name, value, isNonNegativeInteger, "a non-negative integer (elements)");
    } else if (key === "stage3_prefetch_bucket_size") {
      settings.prefetchBytes = numberOrAuto(where, name, value, isNonNegativeInteger, "a non-negative integer");
    } else if (Object.hasOwn(NOT_APPLIED_ZERO, key)) {
      notUsed(name, NOT_APPLIED_ZERO[key]);
    } else {
      throw unknownKey(`${where}: zero_optimization`, key, [...APPLIED_ZERO, ...Object.keys(NOT_APPLIED_ZERO)]);
    }
  }
  if (settings.zeroStage !== undefined) {
    const problem = zeroChoiceProblem({
      stage: { value: settings.zeroStage, name: '"zero_optimization.stage"' },
      offloadOptimizer: { value: settings.offloadOptimizer ?? false, name: zero.cpu_offload === true ? '"zero_optimization.cpu_offload" true' : '"zero_optimization.offload_optimizer.device" "cpu"' },
      offloadParameters: { value: settings.offloadParameters ?? false, name: zero.cpu_offload_param === true ? '"zero_optimization.cpu_offload_param" true' : '"zero_optimization.offload_param.device" "cpu"' },
    });
    if (problem !== undefined) throw new Error(`${where}: ${problem}`);
  }
}

/** Reads and validates a ds_config.json file. */
export function readDeepSpeedConfigFile(path: string): DeepSpeedSettings {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new Error(`DeepSpeed config ${path}: cannot read it: ${(error as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new Error(`DeepSpeed config ${path}: not valid JSON: ${(error as Error).message}`);
  }
  return readDeepSpeedConfig(raw, path);
}

/**
 * The train batch sizes with "auto" filled from the run, as HF's prepare does: the micro batch
 * is the smallest batch size of the loaders prepared together (`is_train_batch_min`), and
 * `train_batch_size` = micro · accumulation · processes; throws when the config's numbers
 * disagree, as DeepSpeed does. A micro batch the config gives is kept, whatever the loaders'.
 */
export function fillBatchSizes(
  settings: Pick<DeepSpeedSettings, "trainMicroBatchSizePerGpu" | "trainBatchSize">,
  run: { loaderBatchSizes: number[]; gradientAccumulationSteps: number; numProcesses: number },
): { trainMicroBatchSizePerGpu: number; trainBatchSize: number } {
  const micro = settings.trainMicroBatchSizePerGpu ?? Math.min(...run.loaderBatchSizes);
  const total = micro * run.gradientAccumulationSteps * run.numProcesses;
  if (settings.trainBatchSize !== undefined && settings.trainBatchSize !== total) {
    throw new Error(
      `prepare: the DeepSpeed config's train_batch_size is ${settings.trainBatchSize} but micro batch ${micro} × gradient accumulation ` +
        `${run.gradientAccumulationSteps} × ${run.numProcesses} processes is ${total}; fix one or set it to "auto"`,
    );
  }
  return { trainMicroBatchSizePerGpu: micro, trainBatchSize: total };
}
