// The accelerate config file (YAML, or JSON when the name ends in .json), with
// Hugging Face Accelerate's key names: where it lives, reading it with errors
// that name the offending key, and writing it. Used by `config`, `launch`, `env` and `test`.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import YAML from "yaml";
import { suggestName } from "../errors.js";
import { MIXED_PRECISIONS, type MixedPrecision } from "../mixed-precision.js";
import { NVME_REFUSED, OFFLOAD_DEVICES, ZERO_STAGES, isZeroStage, zeroChoiceProblem, type OffloadDevice, type ZeroStage } from "../strategy/zero-options.js";

export const DISTRIBUTED_TYPES = ["NO", "MULTI_CPU", "MULTI_GPU", "DEEPSPEED", "FSDP"] as const;
export type DistributedType = (typeof DISTRIBUTED_TYPES)[number];
export type MixedPrecisionName = MixedPrecision;
export { MIXED_PRECISIONS };

export interface ClusterConfig {
  compute_environment?: "LOCAL_MACHINE";
  distributed_type?: DistributedType;
  mixed_precision?: MixedPrecisionName;
  use_cpu?: boolean;
  debug?: boolean;
  /** Total across machines. */
  num_processes?: number;
  num_machines?: number;
  machine_rank?: number;
  main_process_ip?: string | null;
  main_process_port?: number | null;
  /** "all" or comma-separated GPU ids. */
  gpu_ids?: string;
  gradient_accumulation_steps?: number;
  rdzv_backend?: string;
  same_network?: boolean;
  main_training_function?: string;
  enable_cpu_affinity?: boolean;
  downcast_bf16?: boolean | string;
  /** With `distributed_type: DEEPSPEED` (HF's `deepspeed_config` section; keys that do not apply are listed as not used). */
  deepspeed_config?: DeepSpeedConfigSection;
  /** With `distributed_type: FSDP` (HF's `fsdp_config` section, FSDP2). */
  fsdp_config?: FsdpConfigSection;
}

export interface DeepSpeedConfigSection {
  zero_stage?: ZeroStage;
  deepspeed_config_file?: string;
  gradient_accumulation_steps?: number;
  gradient_clipping?: number;
  /** "cpu": optimizer state and step on the CPU (stages 1-3). */
  offload_optimizer_device?: OffloadDevice;
  /** "cpu": parameter shards on the CPU (stage 3). */
  offload_param_device?: OffloadDevice;
  /** Accepted: stage 3 shards the parameters when `prepare` sees the model. */
  zero3_init_flag?: boolean;
}

export interface FsdpConfigSection {
  fsdp_version?: number;
  /** true (full shard): ZeRO stage 3; false: stage 2. */
  fsdp_reshard_after_forward?: boolean;
  /** Optimizer state and step on the CPU, and with full shard the parameter shards. */
  fsdp_offload_params?: boolean;
}

/** Thrown by a field check: what the value should have been. */
class Expected extends Error {}

type Check<T> = (value: unknown) => T;

const oneOf =
  <T extends string>(options: readonly T[]): Check<T> =>
  (value) => {
    if (typeof value === "string" && (options as readonly string[]).includes(value)) return value as T;
    throw new Expected(`one of ${options.map((o) => JSON.stringify(o)).join(", ")}`);
  };
const integerAtLeast =
  (min: number, what: string): Check<number> =>
  (value) => {
    if (typeof value === "number" && Number.isSafeInteger(value) && value >= min) return value;
    throw new Expected(what);
  };
const positiveInteger = integerAtLeast(1, "a positive integer");
const nonNegativeInteger = integerAtLeast(0, "a non-negative integer");
const port: Check<number> = (value) => {
  if (typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 65535) return value;
  throw new Expected("a port number in [0, 65535]");
};
const boolean: Check<boolean> = (value) => {
  if (typeof value === "boolean") return value;
  throw new Expected("true or false");
};
const string: Check<string> = (value) => {
  if (typeof value === "string") return value;
  throw new Expected("a string");
};
const nullable =
  <T>(check: Check<T>): Check<T | null> =>
  (value) =>
    value === null ? null : check(value);
const gpuIds: Check<string> = (value) => {
  // YAML reads `gpu_ids: 0` as a number and `gpu_ids: 0,1` as a string.
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return String(value);
  if (typeof value === "string" && (value === "all" || /^\d+(\s*,\s*\d+)*$/.test(value))) return value.replace(/\s+/g, "");
  throw new Expected(`"all" or comma-separated GPU ids such as "0,1"`);
};
const booleanOrString: Check<boolean | string> = (value) => {
  if (typeof value === "boolean" || typeof value === "string") return value;
  throw new Expected("true, false or a string");
};

const nonNegativeNumber: Check<number> = (value) => {
  if (typeof value === "number" && value >= 0) return value;
  throw new Expected("a non-negative number");
};
const offloadDevice: Check<OffloadDevice> = (value) => {
  if (value === null) return "none";
  if (typeof value === "string" && (OFFLOAD_DEVICES as readonly string[]).includes(value)) return value as OffloadDevice;
  throw new Expected(value === "nvme" ? `"cpu" or "none" (${NVME_REFUSED})` : '"cpu" or "none"');
};
/** HF writes true/false; its FSDP1-era files may have "true"/"false". */
const booleanOrText: Check<boolean> = (value) => {
  if (typeof value === "boolean") return value;
  if (value === "true" || value === "false") return value === "true";
  throw new Expected("true or false");
};

/** Checks for a section's keys that apply, and the names of those that load but do not apply. */
interface SectionRules {
  applied: Record<string, Check<unknown>>;
  notApplied: string[];
  /** Why the checked keys cannot go together (an Expected message), if they cannot. */
  together?: (checked: Record<string, unknown>) => string | undefined;
}

const DEEPSPEED_SECTION: SectionRules = {
  applied: {
    zero_stage: (value) => {
      if (isZeroStage(value)) return value;
      throw new Expected(`${ZERO_STAGES.slice(0, -1).join(", ")} or ${ZERO_STAGES.at(-1)}`);
    },
    deepspeed_config_file: nullable(string),
    gradient_accumulation_steps: positiveInteger,
    gradient_clipping: nonNegativeNumber,
    offload_optimizer_device: offloadDevice,
    offload_param_device: offloadDevice,
    zero3_init_flag: boolean,
  },
  together: (checked) =>
    checked.zero_stage === undefined
      ? undefined
      : zeroChoiceProblem({
          stage: { value: checked.zero_stage as ZeroStage, name: '"zero_stage"' },
          offloadOptimizer: { value: checked.offload_optimizer_device === "cpu", name: '"offload_optimizer_device" "cpu"' },
          offloadParameters: { value: checked.offload_param_device === "cpu", name: '"offload_param_device" "cpu"' },
        }),
  notApplied: [
    "zero3_save_16bit_model", "offload_optimizer_nvme_path", "offload_param_nvme_path", "deepspeed_hostfile",
    "deepspeed_multinode_launcher", "deepspeed_inclusion_filter", "deepspeed_exclusion_filter", "deepspeed_moe_layer_cls_names",
  ],
};

const FSDP_SECTION: SectionRules = {
  applied: {
    fsdp_version: (value) => {
      if (value === 2) return value;
      throw new Expected("2 (FSDP1 is not available)");
    },
    fsdp_reshard_after_forward: booleanOrText,
    fsdp_offload_params: booleanOrText,
  },
  notApplied: [
    "fsdp_auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap", "fsdp_min_num_params", "fsdp_sharding_strategy", "fsdp_state_dict_type",
    "fsdp_cpu_ram_efficient_loading", "fsdp_sync_module_states", "fsdp_use_orig_params", "fsdp_backward_prefetch", "fsdp_forward_prefetch",
    "fsdp_activation_checkpointing",
  ],
};

/** A section check: validates the keys that apply, and names the others in `unused` when they ask for something. */
const section =
  (name: string, rules: SectionRules, unused: string[]): Check<Record<string, unknown>> =>
  (value) => {
    if (value === null || value === undefined) return {};
    if (!isMapping(value)) throw new Expected("a mapping");
    const checked: Record<string, unknown> = {};
    for (const [key, entry] of Object.entries(value)) {
      if (Object.hasOwn(rules.applied, key)) {
        if (entry === null) continue;
        try {
          checked[key] = rules.applied[key](entry);
        } catch (error) {
          if (!(error instanceof Expected)) throw error;
          throw new Expected(`a mapping whose "${key}" is ${error.message}, got ${describe(entry)}`);
        }
      } else if (rules.notApplied.includes(key)) {
        if (asksForSomething(entry)) unused.push(`${name}.${key}`);
      } else {
        const suggestion = suggestName(key, [...Object.keys(rules.applied), ...rules.notApplied]);
        throw new Expected(`a mapping without the unknown key "${key}"${suggestion ? ` (did you mean "${suggestion}"?)` : ""}`);
      }
    }
    const problem = rules.together?.(checked);
    if (problem !== undefined) throw new Expected(`a mapping whose keys agree (${problem})`);
    return checked;
  };

/** Sections are checked with an `unused` list to fill; FIELDS' copies only validate. */
const sectionFields = (unused: string[]) => ({
  deepspeed_config: section("deepspeed_config", DEEPSPEED_SECTION, unused) as Check<DeepSpeedConfigSection>,
  fsdp_config: section("fsdp_config", FSDP_SECTION, unused) as Check<FsdpConfigSection>,
});

const FIELDS: { [K in keyof ClusterConfig]-?: Check<ClusterConfig[K]> } = {
  compute_environment: oneOf(["LOCAL_MACHINE"] as const),
  distributed_type: oneOf(DISTRIBUTED_TYPES),
  mixed_precision: oneOf(MIXED_PRECISIONS),
  use_cpu: boolean,
  debug: boolean,
  num_processes: positiveInteger,
  num_machines: positiveInteger,
  machine_rank: nonNegativeInteger,
  main_process_ip: nullable(string),
  main_process_port: nullable(port),
  gpu_ids: gpuIds,
  gradient_accumulation_steps: positiveInteger,
  rdzv_backend: oneOf(["static"] as const),
  same_network: boolean,
  main_training_function: string,
  enable_cpu_affinity: boolean,
  downcast_bf16: booleanOrString,
  ...sectionFields([]),
};

const isMapping = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === "object" && !Array.isArray(value);

/**
 * Keys Hugging Face writes that configure things accelerate-ts does not have
 * (TPU pods, DeepSpeed/FSDP/Megatron sections, dynamo): accepted so that HF's files
 * load, and ignored.
 */
const IGNORED_KEYS: Record<string, Check<unknown>> = {
  tpu_env: (value) => {
    if (Array.isArray(value)) return value;
    throw new Expected("a list");
  },
  tpu_use_cluster: boolean,
  tpu_use_sudo: boolean,
  tpu_name: nullable(string),
  tpu_zone: nullable(string),
  command_file: nullable(string),
  commands: (value) => value,
  dynamo_backend: nullable(string),
  ...Object.fromEntries(
    ["dynamo_config", "megatron_lm_config", "fp8_config", "ipex_config", "mpirun_config", "parallelism_config"].map(
      (key) => [
        key,
        (value: unknown) => {
          if (value === null || isMapping(value)) return value;
          throw new Expected("a mapping");
        },
      ],
    ),
  ),
};

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return "a list";
  if (isMapping(value)) return "a mapping";
  return String(value);
}

/** Whether an ignored key's value asks for something (not null, false, "no"/"NO", empty, or a mapping of such). */
function asksForSomething(value: unknown): boolean {
  if (value === null || value === undefined || value === false || value === "" || value === "no" || value === "NO") return false;
  if (Array.isArray(value)) return value.length > 0;
  if (isMapping(value)) return Object.values(value).some(asksForSomething);
  return true;
}

/**
 * Validates parsed file contents; `source` names the file in error messages.
 * Keys of Hugging Face's format that accelerate-ts does not apply, and whose value
 * asks for something (`dynamo_backend: INDUCTOR`, an `ipex_config`), are added to `unused`.
 */
export function parseClusterConfig(raw: unknown, source: string, unused: string[] = []): ClusterConfig {
  const where = `config file ${source}`;
  if (raw === null || raw === undefined) return {};
  if (!isMapping(raw)) throw new Error(`${where}: expected a mapping of keys to values, got ${describe(raw)}`);
  const config: Record<string, unknown> = {};
  const fields: Record<string, Check<unknown>> = { ...FIELDS, ...sectionFields(unused) };
  for (const [key, value] of Object.entries(raw)) {
    const known = Object.hasOwn(fields, key);
    const check = known ? fields[key] : Object.hasOwn(IGNORED_KEYS, key) ? IGNORED_KEYS[key] : undefined;
    if (check === undefined) {
      const suggestion = suggestName(key, Object.keys(FIELDS));
      throw new Error(`${where}: unknown key "${key}"${suggestion ? ` (did you mean "${suggestion}"?)` : ""}`);
    }
    try {
      const checked = check(value);
      // An empty section (HF writes `fsdp_config: {}`) says nothing.
      if (known && !(isMapping(checked) && Object.keys(checked).length === 0)) config[key] = checked;
      else if (asksForSomething(value)) unused.push(key);
    } catch (error) {
      if (!(error instanceof Expected)) throw error;
      // A section's message already names the value inside it that is wrong.
      throw new Error(`${where}: "${key}" must be ${error.message}${isMapping(value) ? "" : `, got ${describe(value)}`}`);
    }
  }
  const result = config as ClusterConfig;
  const machines = result.num_machines ?? 1;
  if (result.machine_rank !== undefined && result.machine_rank >= machines) {
    throw new Error(`${where}: "machine_rank" must be below "num_machines" (${machines}), got ${result.machine_rank}`);
  }
  return result;
}

/** `$HF_HOME/accelerate/default_config.yaml`, HF_HOME defaulting to `${XDG_CACHE_HOME:-~/.cache}/huggingface`. */
export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const hfHome = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface");
  return join(hfHome, "accelerate", "default_config.yaml");
}

export function readClusterConfig(path: string, unused: string[] = []): ClusterConfig {
  if (!existsSync(path)) {
    throw new Error(`config file ${path} does not exist; create it with \`accelerate config\` or \`accelerate config default\``);
  }
  const text = readFileSync(path, "utf8");
  let raw: unknown;
  try {
    raw = path.endsWith(".json") ? JSON.parse(text) : YAML.parse(text);
  } catch (error) {
    throw new Error(`config file ${path}: not valid ${path.endsWith(".json") ? "JSON" : "YAML"}: ${(error as Error).message}`);
  }
  return parseClusterConfig(raw, path, unused);
}

/**
 * The config a command should use: `explicitPath` (which must exist) or the
 * default file when there is one; undefined when neither.
 */
export function loadClusterConfig(
  explicitPath: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): { path: string; config: ClusterConfig; unused: string[] } | undefined {
  const path = explicitPath || defaultConfigPath(env);
  if (!explicitPath && !existsSync(path)) return undefined;
  const unused: string[] = [];
  return { path, config: readClusterConfig(path, unused), unused };
}

/** The one-line notice for keys of HF's format that this run does not apply, or undefined when there are none. */
export function unusedKeysNotice(loaded: { path: string; unused: string[] } | undefined): string | undefined {
  if (loaded === undefined || loaded.unused.length === 0) return undefined;
  return `config file ${loaded.path}: not used by accelerate-ts: ${loaded.unused.join(", ")}`;
}

/** The file's text: keys in a stable order, JSON for a .json path, YAML otherwise. */
export function formatClusterConfig(config: ClusterConfig, path: string): string {
  const ordered = Object.fromEntries(Object.keys(FIELDS).filter((key) => key in config).map((key) => [key, config[key as keyof ClusterConfig]]));
  return path.endsWith(".json") ? `${JSON.stringify(ordered, null, 2)}\n` : YAML.stringify(ordered);
}

export function writeClusterConfig(path: string, config: ClusterConfig): void {
  // Validate what we write by the same rules we read with.
  parseClusterConfig(JSON.parse(JSON.stringify(config)), path);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, formatClusterConfig(config, path));
}

/** The config written when nothing was asked: one machine, every GPU, or one CPU process. */
export function basicClusterConfig(cudaDevices: number, mixedPrecision: MixedPrecisionName): ClusterConfig {
  const base: ClusterConfig = {
    compute_environment: "LOCAL_MACHINE",
    debug: false,
    mixed_precision: mixedPrecision,
    num_machines: 1,
    machine_rank: 0,
    gradient_accumulation_steps: 1,
    rdzv_backend: "static",
    same_network: true,
    main_training_function: "main",
    enable_cpu_affinity: false,
    downcast_bf16: "no",
  };
  if (cudaDevices > 1) return { ...base, distributed_type: "MULTI_GPU", num_processes: cudaDevices, gpu_ids: "all", use_cpu: false };
  if (cudaDevices === 1) return { ...base, distributed_type: "NO", num_processes: 1, gpu_ids: "all", use_cpu: false };
  return { ...base, distributed_type: "NO", num_processes: 1, use_cpu: true };
}

/** Parses the command-line flag `--key` by the same rule as the config key of that name. */
export function parseFlagValue<K extends keyof ClusterConfig>(key: K, raw: string, who: string): NonNullable<ClusterConfig[K]> {
  // Flags arrive as text; the config rules expect what YAML would have produced.
  const value: unknown = /^-?\d+$/.test(raw.trim()) ? Number(raw) : raw;
  try {
    return FIELDS[key](value) as NonNullable<ClusterConfig[K]>;
  } catch (error) {
    if (!(error instanceof Expected)) throw error;
    throw new Error(`${who}: --${key} must be ${error.message}, got ${JSON.stringify(raw)}`);
  }
}
