// The questions `accelerate config` asks, written against a small Ask
// interface so that tests can answer them without a terminal.
import { consola } from "consola";
import { MIXED_PRECISIONS, type ClusterConfig, type DistributedType, type MixedPrecisionName } from "./config-file.js";

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
  config.mixed_precision = await ask.select<MixedPrecisionName>(
    "Do you wish to use mixed precision?",
    MIXED_PRECISIONS.map((value) => ({ label: value, value })),
    "no",
  );
  config.gradient_accumulation_steps = await askInteger(ask, "How many gradient accumulation steps (micro-batches per optimizer step)?", 1, 1);
  return config;
}
