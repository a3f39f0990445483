// The ZeRO options every dialect maps onto (stage, CPU offload, stage 3's gathering), their
// defaults, and the rules that tie them together: one place for what the DeepSpeed config,
// the plugins, the config file, the launcher and the questionnaire share.

export const ZERO_STAGES = [0, 1, 2, 3] as const;
/** 0: data parallelism; 1: optimizer state partitioned; 2: and gradients; 3: and parameters. */
export type ZeroStage = (typeof ZERO_STAGES)[number];

export const isZeroStage = (value: unknown): value is ZeroStage => (ZERO_STAGES as readonly unknown[]).includes(value);

/** Where DeepSpeed's `offload_optimizer.device` / `offload_param.device` may point here ("nvme" is refused). */
export const OFFLOAD_DEVICES = ["none", "cpu"] as const;
export type OffloadDevice = (typeof OFFLOAD_DEVICES)[number];

/** Why "nvme" is refused, for messages that name the key. */
export const NVME_REFUSED = 'NVMe offload is not available; use "cpu" or "none"';

/** DeepSpeed's default `stage3_param_persistence_threshold`: parameters with fewer elements stay whole. */
export const DEFAULT_PARAM_PERSISTENCE_THRESHOLD = 100_000;
/** DeepSpeed's default `stage3_prefetch_bucket_size`. */
export const DEFAULT_PREFETCH_BYTES = 50_000_000;

/** "cpu" → true, "none" → false; anything else is an Error naming `name`. */
export function parseOffloadDevice(value: unknown, name: string): boolean {
  if (value === "cpu") return true;
  if (value === "none") return false;
  if (value === "nvme") throw new Error(`${name} "nvme": ${NVME_REFUSED}`);
  throw new Error(`${name} must be "cpu" or "none", got ${JSON.stringify(value)}`);
}

/** A stage 3 size (elements or bytes): a non-negative integer. */
export const isNonNegativeInteger = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

/** What the run asks for, each value with the option (and value) it came from, for messages. */
export interface ZeroChoice {
  stage: { value: ZeroStage; name: string };
  offloadOptimizer: { value: boolean; name: string };
  offloadParameters: { value: boolean; name: string };
}

/**
 * Why the stage and the offloads cannot go together, or undefined when they can: optimizer
 * offload moves the optimizer's partition, so it needs a stage that partitions (1-3);
 * parameter offload moves the parameters' shards, which only stage 3 has.
 */
export function zeroChoiceProblem({ stage, offloadOptimizer, offloadParameters }: ZeroChoice): string | undefined {
  if (offloadOptimizer.value && stage.value === 0) {
    return `${offloadOptimizer.name} needs ZeRO stage 1, 2 or 3 (the optimizer state is offloaded by partition), but ${stage.name} is 0`;
  }
  if (offloadParameters.value && stage.value !== 3) {
    return `${offloadParameters.name} needs ZeRO stage 3 (parameters sharded), but ${stage.name} is ${stage.value}`;
  }
  return undefined;
}

const TRUE_TEXT = ["y", "yes", "t", "true", "on", "1"];
const FALSE_TEXT = ["n", "no", "f", "false", "off", "0"];

/** A true/false flag or variable, with the spellings HF's `str_to_bool` takes; anything else is an Error naming `name`. */
export function parseBooleanText(text: string, name: string): boolean {
  const lower = text.trim().toLowerCase();
  if (TRUE_TEXT.includes(lower)) return true;
  if (FALSE_TEXT.includes(lower)) return false;
  throw new Error(`${name} must be true or false, got ${JSON.stringify(text)}`);
}
