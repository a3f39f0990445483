// Reads a DeepSpeed JSON config (ds_config.json) for the keys accelerate-ts applies, fills
// "auto" values from the run as HF's DeepSpeed integration does, and names every key it
// does not apply: an Error when ignoring it would change training, a "not used" line otherwise.
import { readFileSync } from "node:fs";
import { suggestName } from "../cli/config-file.js";
import type { GradScalerOptions } from "../precision.js";

/** A DeepSpeed config as JSON (DeepSpeed's snake_case keys); numbers may be "auto". */
export type DeepSpeedConfigJson = { [key: string]: DeepSpeedConfigValue };
export type DeepSpeedConfigValue = string | number | boolean | null | DeepSpeedConfigValue[] | DeepSpeedConfigJson;

/** What a DeepSpeed config asks of this run; undefined where it leaves the choice to the run ("auto" or absent). */
export interface DeepSpeedSettings {
  zeroStage?: number;
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
  zero_force_ds_cpu_optimizer: "no CPU offload",
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
  allgather_bucket_size: "one all-gather per param group",
  overlap_comm: "communication is not overlapped",
  reduce_scatter: "stage 2 always reduce-scatters",
  reduce_bucket_size: "use the Accelerator's bucketBytes",
  contiguous_gradients: "partitions are always contiguous",
  round_robin_gradients: "partitions are contiguous slices",
  sub_group_size: "each param group is one flat buffer",
  load_from_fp32_weights: "checkpoints hold fp32 state",
  elastic_checkpoint: "checkpoints resume on any number of processes",
  ignore_unused_parameters: "unused parameters have zero gradients",
  zero_hpz_partition_size: "no ZeRO++",
  zero_quantized_weights: "no ZeRO++",
  zero_quantized_gradients: "no ZeRO++",
  memory_efficient_linear: "stage 3 only",
  cpu_offload: "no CPU offload",
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
  if (raw.zero_optimization !== undefined) settings.zeroStage = readZero(where, raw.zero_optimization, notUsed);
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

function readZero(where: string, zero: unknown, notUsed: (key: string, why: string) => void): number | undefined {
  if (!isMapping(zero)) throw new Error(`${where}: "zero_optimization" must be a mapping, got ${JSON.stringify(zero)}`);
  let stage: number | undefined;
  for (const [key, value] of Object.entries(zero)) {
    const name = `zero_optimization.${key}`;
    if (key === "stage") {
      if (value === 3) throw new Error(`${where}: "${name}" 3 (parameters sharded) is not available yet; use 1 or 2`);
      if (value === AUTO) continue;
      if (value !== 0 && value !== 1 && value !== 2) throw new Error(`${where}: "${name}" must be 0, 1 or 2, got ${JSON.stringify(value)}`);
      stage = value;
    } else if (key === "offload_optimizer" || key === "offload_param") {
      const device = isMapping(value) ? value.device : value;
      if (device !== undefined && device !== null && device !== "none") {
        throw new Error(`${where}: "${name}.device" ${JSON.stringify(device)}: CPU/NVMe offload is not available yet; remove "${name}" or set its device to "none"`);
      }
    } else if (key.startsWith("stage3_")) {
      notUsed(name, "stage 3 only");
    } else if (Object.hasOwn(NOT_APPLIED_ZERO, key)) {
      notUsed(name, NOT_APPLIED_ZERO[key]);
    } else {
      throw unknownKey(`${where}: zero_optimization`, key, ["stage", "offload_optimizer", "offload_param", ...Object.keys(NOT_APPLIED_ZERO), "stage3_prefetch_bucket_size"]);
    }
  }
  return stage;
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
 * The train batch sizes with "auto" filled from the run (HF: the micro batch is the
 * prepared loader's batch size, `train_batch_size` = micro · accumulation · processes);
 * throws when given numbers disagree, as DeepSpeed does.
 */
export function fillBatchSizes(
  settings: Pick<DeepSpeedSettings, "trainMicroBatchSizePerGpu" | "trainBatchSize">,
  run: { loaderBatchSize: number; gradientAccumulationSteps: number; numProcesses: number },
): { trainMicroBatchSizePerGpu: number; trainBatchSize: number } {
  const micro = settings.trainMicroBatchSizePerGpu ?? run.loaderBatchSize;
  const total = micro * run.gradientAccumulationSteps * run.numProcesses;
  if (micro !== run.loaderBatchSize) {
    throw new Error(
      `prepare: the DeepSpeed config's train_micro_batch_size_per_gpu is ${micro} but the data loader's batchSize is ${run.loaderBatchSize}; ` +
        `make them equal or set it to "auto"`,
    );
  }
  if (settings.trainBatchSize !== undefined && settings.trainBatchSize !== total) {
    throw new Error(
      `prepare: the DeepSpeed config's train_batch_size is ${settings.trainBatchSize} but micro batch ${micro} × gradient accumulation ` +
        `${run.gradientAccumulationSteps} × ${run.numProcesses} processes is ${total}; fix one or set it to "auto"`,
    );
  }
  return { trainMicroBatchSizePerGpu: micro, trainBatchSize: total };
}
