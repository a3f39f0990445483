// accelerator.profile: runs a function under libtorch's profiler (what torch.profiler drives;
// Hugging Face's `accelerator.profile(ProfileKwargs)`), then returns its result with the time
// spent per operator and per GPU kernel, and writes a Chrome trace when asked.
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { checkOptionNames, describe, optionNames } from "./errors.js";
import { native } from "./native.js";

/** HF's ProfileKwargs, camelCased. */
export interface ProfileOptions {
  /** What to record: "cpu" (operators, host time) and/or "cuda" (kernels, device time); default both on a GPU, ["cpu"] on the CPU. */
  activities?: ("cpu" | "cuda")[];
  /** Record operators' input shapes (in the trace). */
  recordShapes?: boolean;
  /** Record tensor allocations (in the trace). */
  profileMemory?: boolean;
  /** Estimate the floating-point operations of matmuls and convolutions (`flops` in the rows). */
  withFlops?: boolean;
  /** Write the Chrome trace (chrome://tracing, Perfetto) as `profile_<processIndex>.json` in this folder, created if missing. */
  outputTraceDir?: string;
}

/** One operator's (device "cpu") or GPU kernel's (device "cuda") events added up. */
export interface ProfileRow {
  name: string;
  device: "cpu" | "cuda";
  count: number;
  totalMs: number;
  /** Estimated floating-point operations (with `withFlops`), else 0. */
  flops: number;
}

const OPTIONS = optionNames<ProfileOptions>()(["activities", "recordShapes", "profileMemory", "withFlops", "outputTraceDir"]);

/** What `accelerator.profile` returns: the function's result and what the profiler saw. */
export class Profile<R> {
  constructor(
    readonly result: R,
    /** Every operator and kernel, the largest total time first. */
    readonly rows: ProfileRow[],
    /** Where the Chrome trace was written, when `outputTraceDir` was given. */
    readonly tracePath: string | undefined,
  ) {}

  /** The rows as a text table (torch's `key_averages().table()`): the first `rowLimit` (default 20) of `device` (default both). */
  table(options: { rowLimit?: number; device?: "cpu" | "cuda" } = {}): string {
    checkOptionNames("table", options, ["rowLimit", "device"]);
    const { rowLimit = 20, device } = options;
    if (!(rowLimit === Infinity || (Number.isInteger(rowLimit) && rowLimit >= 0))) throw new Error(`table: rowLimit must be a non-negative integer, got ${describe(rowLimit)}`);
    if (device !== undefined && device !== "cpu" && device !== "cuda") throw new Error(`table: device must be "cpu" or "cuda", got ${describe(device)}`);
    const rows = this.rows.filter((r) => device === undefined || r.device === device).slice(0, rowLimit);
    const width = Math.min(80, Math.max(4, ...rows.map((r) => r.name.length)));
    const line = (name: string, device: string, count: string, total: string, mean: string) =>
      `${name.padEnd(width)}  ${device.padEnd(6)}  ${count.padStart(7)}  ${total.padStart(10)}  ${mean.padStart(10)}`;
    return [
      line("Name", "Device", "Calls", "Total ms", "Mean us"),
      ...rows.map((r) =>
        line(r.name.length > width ? `${r.name.slice(0, width - 1)}…` : r.name, r.device, String(r.count), r.totalMs.toFixed(3), ((r.totalMs * 1000) / r.count).toFixed(1)),
      ),
    ].join("\n");
  }
}

function checkOptions(options: ProfileOptions, onGpu: boolean): Required<Pick<ProfileOptions, "activities">> {
  checkOptionNames("profile", options, OPTIONS);
  const activities: ("cpu" | "cuda")[] = options.activities === undefined ? (onGpu ? ["cpu", "cuda"] : ["cpu"]) : options.activities;
  if (!Array.isArray(activities) || activities.length === 0) throw new Error(`profile: activities must be a non-empty array of "cpu" and "cuda", got ${describe(activities)}`);
  const wrong = activities.find((a) => a !== "cpu" && a !== "cuda");
  if (wrong !== undefined) throw new Error(`profile: activities hold ${describe(wrong)}; each must be "cpu" or "cuda"`);
  if (activities.includes("cuda") && !onGpu) throw new Error(`profile: activities include "cuda" but this process runs on the CPU`);
  for (const key of ["recordShapes", "profileMemory", "withFlops"] as const) {
    if (options[key] !== undefined && typeof options[key] !== "boolean") throw new Error(`profile: ${key} must be a boolean, got ${describe(options[key])}`);
  }
  if (options.outputTraceDir !== undefined && (typeof options.outputTraceDir !== "string" || options.outputTraceDir === "")) {
    throw new Error(`profile: outputTraceDir must be a folder path, got ${describe(options.outputTraceDir)}`);
  }
  return { activities };
}

/**
 * Creates `dir` and its missing parents one at a time (mkdirSync's recursive mode can spin
 * forever under /proc), as an Error naming the folder.
 */
function makeFolder(dir: string): void {
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) throw new Error(`profile: outputTraceDir ${JSON.stringify(dir)} is not a folder`);
    return;
  }
  if (dirname(dir) !== dir) makeFolder(dirname(dir));
  try {
    mkdirSync(dir);
  } catch (error) {
    throw new Error(`profile: cannot create outputTraceDir ${JSON.stringify(dir)}: ${(error as Error).message}`);
  }
}

/** A Promise, also from another realm or library (anything with a `then` method). */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === "object" || typeof value === "function") && typeof (value as { then?: unknown }).then === "function";
}

/**
 * Runs `fn` (synchronous, or async: profiling ends when its Promise settles) under the
 * profiler. `synchronize` waits for the GPU before the profile ends, so that the kernels
 * `fn` queued are in it.
 */
export function profile<R>(
  fn: () => R,
  options: ProfileOptions,
  where: { processIndex: number; onGpu: boolean; synchronize: () => void },
): Profile<R> | Promise<Profile<Awaited<R>>> {
  if (typeof fn !== "function") throw new Error(`profile: expected a function to profile, got ${describe(fn)}`);
  const { activities } = checkOptions(options, where.onGpu);
  let tracePath: string | undefined;
  if (options.outputTraceDir !== undefined) {
    makeFolder(options.outputTraceDir);
    tracePath = join(options.outputTraceDir, `profile_${where.processIndex}.json`);
  }
  // Without a GPU, Kineto's only log line is an ERROR that it found none: keep it quiet there.
  if (process.env.KINETO_LOG_LEVEL === undefined && !native.cudaIsAvailable()) process.env.KINETO_LOG_LEVEL = "5";
  native.profilerStart({
    cpu: activities.includes("cpu"),
    cuda: activities.includes("cuda"),
    recordShapes: options.recordShapes,
    profileMemory: options.profileMemory,
    withFlops: options.withFlops,
  });
  const finish = <T>(result: T): Profile<T> => {
    let rows;
    try {
      where.synchronize();
    } finally {
      rows = native.profilerStop(tracePath);
    }
    const profileRows = rows.map((r) => ({ name: r.name, device: r.device as "cpu" | "cuda", count: r.count, totalMs: r.totalNs / 1e6, flops: r.flops }));
    return new Profile(result, profileRows, tracePath);
  };
  let result: R;
  try {
    result = fn();
  } catch (error) {
    native.profilerStop();
    throw error;
  }
  if (isThenable(result)) {
    return Promise.resolve(result).then(
      (value: Awaited<R>) => finish(value),
      (error: unknown) => {
        native.profilerStop();
        throw error;
      },
    );
  }
  return finish(result);
}
