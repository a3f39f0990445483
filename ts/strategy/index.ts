// Picks the strategy for a run from the process state and the Accelerator's options.
import type { ProcessState } from "../state.js";
import { DataParallel } from "./ddp.js";
import { SingleProcess, type Strategy } from "./strategy.js";

export type { Strategy } from "./strategy.js";

export function createStrategy(state: ProcessState, options: { bucketBytes?: number }): Strategy {
  if (state.numProcesses === 1) return new SingleProcess(state);
  return new DataParallel(state, options.bucketBytes ?? 25 * 2 ** 20);
}
