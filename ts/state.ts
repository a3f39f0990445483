// Who this process is in a run: rank, world size and device, read from the
// environment that `accelerate launch` (or torchrun) sets.
import { hostname } from "node:os";
import { native } from "./native.js";

export interface ProcessState {
  numProcesses: number;
  processIndex: number;
  localProcessIndex: number;
  localNumProcesses: number;
  device: string;
}

function intFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`Accelerator: environment variable ${name}="${raw}" is not a non-negative integer`);
  return value;
}

/**
 * Joins the run's process group when there are several processes (once per
 * process; later Accelerators reuse it). Rendezvous and each collective wait at most `timeoutMs`.
 */
export function initProcessGroup(state: ProcessState, timeoutMs: number): void {
  if (state.numProcesses === 1 || native.distIsInitialized()) return;
  const host = process.env.MASTER_ADDR ?? "127.0.0.1";
  const port = intFromEnv("MASTER_PORT", 29500);
  const loopback = host === "127.0.0.1" || host === "localhost";
  const localAddress = process.env.ACCELERATE_LOCAL_ADDRESS ?? (loopback ? "127.0.0.1" : hostname());
  // NCCL for GPU processes (one GPU each), Gloo on the CPU.
  const cudaDevice = state.device.startsWith("cuda:") ? Number(state.device.slice(5)) : undefined;
  native.distInit({ host, port, rank: state.processIndex, worldSize: state.numProcesses, timeoutMs, localAddress, cudaDevice });
}

export function readProcessState(options: { cpu?: boolean }): ProcessState {
  const numProcesses = intFromEnv("WORLD_SIZE", 1);
  const processIndex = intFromEnv("RANK", 0);
  const localProcessIndex = intFromEnv("LOCAL_RANK", 0);
  const localNumProcesses = intFromEnv("LOCAL_WORLD_SIZE", numProcesses);
  if (processIndex >= numProcesses) throw new Error(`Accelerator: RANK=${processIndex} is not below WORLD_SIZE=${numProcesses}`);
  const cpu = options.cpu ?? process.env.ACCELERATE_USE_CPU === "true";
  let device = "cpu";
  if (!cpu && native.cudaIsAvailable()) {
    const gpus = native.cudaDeviceCount();
    if (localProcessIndex >= gpus) {
      throw new Error(
        `Accelerator: LOCAL_RANK=${localProcessIndex} but this host has ${gpus} GPU(s); start at most one process per GPU, or pass cpu: true`,
      );
    }
    device = `cuda:${localProcessIndex}`;
  }
  return { numProcesses, processIndex, localProcessIndex, localNumProcesses, device };
}

/** This rank's contiguous share of `length` items; the first `length % n` ranks get one more. */
export function shareOf(length: number, numProcesses: number, processIndex: number): { start: number; end: number } {
  const base = Math.floor(length / numProcesses);
  const extra = length % numProcesses;
  const start = processIndex * base + Math.min(processIndex, extra);
  return { start, end: start + base + (processIndex < extra ? 1 : 0) };
}
