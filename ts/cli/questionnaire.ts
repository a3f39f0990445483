// The questions `accelerate config` asks, written against a small Ask
// interface so that tests can answer them without a terminal.
import { resolve } from "node:path";
import { consola } from "consola";
import { readDeepSpeedConfigFile } from "../strategy/deepspeed-config.js";
import { OFFLOAD_DEVICES, ZERO_STAGES, type OffloadDevice } from "../strategy/zero-options.js";
import {
  MIXED_PRECISIONS, type ClusterConfig, type DeepSpeedConfigSection, type DistributedType, type FsdpConfigSection, type MixedPrecisionName,
} from "./config-file.js";

export interface Choice<T extends string> {
  label: string;
  value: T;
}

export interface Ask {
  text(message: string, initial: string): Promise<string>;
  select<T extends string>(message: string, choices: Choice<T>[], initial: T): Promise<T>;
  confirm(message: string, initial: boolean): Promise<boolean>;
  /** Told when an answer was not usable (the question is asked again). */
  warn(message: string): void;
}

/** Ask backed by consola's prompts; Ctrl-C rejects, which aborts the questionnaire. */
export const terminalAsk: Ask = {
  async text(message, initial) {
    const answer = await consola.prompt(message, { type: "text", default: initial, placeholder: initial, cancel: "reject" });
    return answer.trim() === "" ? initial : answer.trim();
  },
  async select(message, choices, initial) {
    const answer = await consola.prompt(message, { type: "select", options: choices, initial, cancel: "reject" });
    // consola returns the value for {label, value} options.
    return answer as unknown as (typeof choices)[number]["value"];
  },
  confirm(message, initial) {
    return consola.prompt(message, { type: "confirm", initial, cancel: "reject" });
  },
  warn(message) {
    consola.warn(message);
  },
};

async function askInteger(ask: Ask, message: string, initial: number, min: number, max = Number.MAX_SAFE_INTEGER): Promise<number> {
  for (;;) {
    const answer = await ask.text(message, String(initial));
    const value = Number(answer);
    if (/^\d+$/.test(answer) && value >= min && value <= max) return value;
    ask.warn(`"${answer}" is not an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? "∞" : max}]; try again`);
  }
}

async function askGpuIds(ask: Ask): Promise<string> {
  for (;;) {
    const answer = (await ask.text("Which GPU(s) (by id) should be used on this machine, as a comma-separated list?", "all")).replace(/\s+/g, "");
    if (answer === "all" || /^\d+(,\d+)*$/.test(answer)) return answer;
    ask.warn(`"${answer}" is neither "all" nor a list of GPU ids such as 0,1; try again`);
  }
}

async function askNonNegativeNumber(ask: Ask, message: string, initial: number): Promise<number> {
  for (;;) {
    const answer = await ask.text(message, String(initial));
    const value = Number(answer);
    if (answer.trim() !== "" && Number.isFinite(value) && value >= 0) return value;
    ask.warn(`"${answer}" is not a non-negative number; try again`);
  }
}

const offloadChoices = OFFLOAD_DEVICES.map((value) => ({ label: value, value }));

/** HF's DeepSpeed questions: a DeepSpeed config file, or the stage, offloads, accumulation and clipping. */
async function askDeepSpeed(ask: Ask, useCpu: boolean): Promise<DeepSpeedConfigSection> {
  if (await ask.confirm("Do you want to specify a json file to a DeepSpeed config?", false)) {
    for (;;) {
      const path = await ask.text("Please enter the path to the json DeepSpeed config file:", "");
      try {
        // Absolute, so that `accelerate launch` finds it from any directory.
        readDeepSpeedConfigFile(resolve(path));
        return { deepspeed_config_file: resolve(path) };
      } catch (error) {
        ask.warn(`${(error as Error).message}; try again`);
      }
    }
  }
  const section: DeepSpeedConfigSection = {};
  const stage = await ask.select(
    "What should be your DeepSpeed's ZeRO optimization stage?",
    ZERO_STAGES.map((value) => ({ label: String(value), value: String(value) })),
    "2",
  );
  section.zero_stage = ZERO_STAGES[Number(stage)];
  // Offloading to the CPU means nothing when training on the CPU.
  if (!useCpu && section.zero_stage >= 1) {
    section.offload_optimizer_device = await ask.select<OffloadDevice>("Where to offload optimizer states?", offloadChoices, "none");
    if (section.zero_stage === 3) section.offload_param_device = await ask.select<OffloadDevice>("Where to offload parameters?", offloadChoices, "none");
  }
  section.gradient_accumulation_steps = await askInteger(ask, "How many gradient accumulation steps you're passing in your script?", 1, 1);
  if (await ask.confirm("Do you want to use gradient clipping?", false)) {
    section.gradient_clipping = await askNonNegativeNumber(ask, "What is the gradient clipping value?", 1.0);
  }
  return section;
}

/** HF's FSDP2 questions that apply: resharding after forward (full shard, ZeRO stage 3) and CPU offload. */
async function askFsdp(ask: Ask, useCpu: boolean): Promise<FsdpConfigSection> {
  const section: FsdpConfigSection = { fsdp_version: 2 };
  section.fsdp_reshard_after_forward = await ask.confirm("Do you want to enable resharding after forward (full shard, ZeRO stage 3)?", true);
  section.fsdp_offload_params = useCpu
    ? false
    : await ask.confirm(
        section.fsdp_reshard_after_forward
          ? "Do you want to offload parameters and the optimizer state to CPU?"
          : "Do you want to offload the optimizer state to CPU (without resharding, parameters stay whole on each GPU)?",
        false,
      );
  return section;
}

/** Asks the questions; `cudaDevices` (GPUs seen here) only sets suggested answers. */
export async function askClusterConfig(ask: Ask, cudaDevices: number): Promise<ClusterConfig> {
  const distributedType = await ask.select<DistributedType>(
    "Which type of machine are you using?",
    [
      { label: "No distributed training (one process)", value: "NO" },
      { label: "multi-CPU (several processes on CPUs)", value: "MULTI_CPU" },
      { label: "multi-GPU (one process per GPU)", value: "MULTI_GPU" },
    ],
    cudaDevices > 1 ? "MULTI_GPU" : "NO",
  );
  const config: ClusterConfig = { compute_environment: "LOCAL_MACHINE", distributed_type: distributedType, debug: false };
  let numMachines = 1;
  let numProcesses = 1;
  if (distributedType !== "NO") {
    numMachines = await askInteger(ask, "How many different machines will you use (more than 1 for multi-node training)?", 1, 1);
    config.num_machines = numMachines;
    if (numMachines > 1) {
      config.machine_rank = await askInteger(ask, "What is the rank of this machine?", 0, 0, numMachines - 1);
      for (;;) {
        const ip = await ask.text("What is the IP address of the machine that will host the main process?", "");
        if (ip !== "") {
          config.main_process_ip = ip;
          break;
        }
        ask.warn("an address is needed with several machines; try again");
      }
      config.main_process_port = await askInteger(ask, "What is the port you will use to communicate with the main process?", 29500, 1, 65535);
      config.same_network = await ask.confirm("Are all the machines on the same local network?", true);
      config.rdzv_backend = "static";
    } else {
      config.machine_rank = 0;
    }
    const suggested = distributedType === "MULTI_GPU" ? Math.max(1, cudaDevices) * numMachines : 2 * numMachines;
    for (;;) {
      numProcesses = await askInteger(ask, "How many processes in total will you use (across all machines)?", suggested, 1);
      if (numProcesses % numMachines === 0) break;
      ask.warn(`${numProcesses} processes cannot be split evenly over ${numMachines} machines; try again`);
    }
  } else {
    config.num_machines = 1;
    config.machine_rank = 0;
  }
  config.num_processes = numProcesses;
  if (distributedType === "MULTI_CPU") {
    config.use_cpu = true;
  } else if (distributedType === "NO" && (await ask.confirm("Do you want to run your training on CPU only (even if a GPU is available)?", cudaDevices === 0))) {
    config.use_cpu = true;
  } else {
    config.use_cpu = false;
    config.gpu_ids = await askGpuIds(ask);
  }
  if (await ask.confirm("Do you want to use DeepSpeed?", false)) {
    config.distributed_type = "DEEPSPEED";
    config.deepspeed_config = await askDeepSpeed(ask, config.use_cpu);
  } else if (distributedType !== "NO" && (await ask.confirm("Do you want to use FullyShardedDataParallel?", false))) {
    config.distributed_type = "FSDP";
    config.fsdp_config = await askFsdp(ask, config.use_cpu);
  }
  // A DeepSpeed config file decides precision and accumulation itself (HF does not ask either).
  if (config.deepspeed_config?.deepspeed_config_file !== undefined) return config;
  config.mixed_precision = await ask.select<MixedPrecisionName>(
    "Do you wish to use mixed precision?",
    MIXED_PRECISIONS.map((value) => ({ label: value, value })),
    "no",
  );
  // DeepSpeed's accumulation was asked in its section, as HF does.
  if (config.deepspeed_config === undefined) {
    config.gradient_accumulation_steps = await askInteger(ask, "How many gradient accumulation steps (micro-batches per optimizer step)?", 1, 1);
  }
  return config;
}
