// Experiment tracking for the Accelerator: the built-in trackers ("jsonl",
// "tensorboard"), users' own `GeneralTracker`s, and the set the Accelerator delegates to.
import { JsonlTracker } from "./jsonl.js";
import { TensorBoardTracker } from "./tensorboard.js";
import type { GeneralTracker, LogValues, TrackerConfig } from "./tracker.js";

export type { GeneralTracker, LogValues, TrackerConfig } from "./tracker.js";
export { JsonlTracker } from "./jsonl.js";
export { TensorBoardTracker } from "./tensorboard.js";

/** A built-in tracker's name. */
export type TrackerName = "jsonl" | "tensorboard";
/** What `logWith` accepts: built-in names, "all" (every built-in one), or tracker objects. */
export type LogWith = TrackerName | "all" | GeneralTracker | readonly (TrackerName | "all" | GeneralTracker)[];

const BUILT_IN: Record<TrackerName, new (runName: string, loggingDir: string) => GeneralTracker> = {
  jsonl: JsonlTracker,
  tensorboard: TensorBoardTracker,
};

/**
 * The trackers of one Accelerator. Everything is a no-op off the main process
 * and before `init`, as in HF Accelerate.
 */
export class TrackerSet {
  private trackers: GeneralTracker[] = [];
  private logCalls = 0;

  constructor(
    private readonly logWith: LogWith | undefined,
    private readonly loggingDir: string | undefined,
    private readonly isMainProcess: boolean,
  ) {
    for (const entry of this.entries()) {
      if (typeof entry === "string" && entry !== "all" && !Object.hasOwn(BUILT_IN, entry)) {
        throw new Error(`Accelerator: logWith entry "${entry}" is not a tracker; use "jsonl", "tensorboard", "all" or a GeneralTracker object`);
      }
    }
  }

  private entries(): (TrackerName | "all" | GeneralTracker)[] {
    if (this.logWith === undefined) return [];
    return Array.isArray(this.logWith) ? [...this.logWith] : [this.logWith as TrackerName | "all" | GeneralTracker];
  }

  /** Starts the trackers of `logWith` for run `runName` and stores `config` in each. */
  init(runName: string, config: TrackerConfig = {}): void {
    if (!this.isMainProcess) return;
    if (this.trackers.length > 0) throw new Error(`initTrackers: trackers already started; call endTraining() before starting run "${runName}"`);
    const started: GeneralTracker[] = [];
    for (const entry of this.entries()) {
      const names = entry === "all" ? (Object.keys(BUILT_IN) as TrackerName[]) : [entry];
      for (const item of names) {
        if (typeof item !== "string") {
          started.push(item);
          continue;
        }
        if (started.some((t) => t.name === item)) continue;
        if (this.loggingDir === undefined) {
          throw new Error(`initTrackers: the "${item}" tracker writes files; construct the Accelerator with projectDir`);
        }
        started.push(new BUILT_IN[item](runName, this.loggingDir));
      }
    }
    for (const tracker of started) tracker.storeInitConfiguration(config);
    this.trackers = started;
    this.logCalls = 0;
  }

  log(values: LogValues, step: number | undefined): void {
    if (!this.isMainProcess) return;
    if (step !== undefined && (!Number.isInteger(step) || step < 0)) throw new Error(`log: step must be a non-negative integer, got ${step}`);
    const at = step ?? this.logCalls;
    this.logCalls += 1;
    for (const tracker of this.trackers) tracker.log(values, at);
  }

  /** The started tracker named `name`; an Error lists the started ones when there is none. */
  get(name: string): GeneralTracker | undefined {
    if (!this.isMainProcess) return undefined;
    const found = this.trackers.find((t) => t.name === name);
    if (found === undefined) {
      throw new Error(`getTracker: no started tracker "${name}"; started: ${this.trackers.map((t) => `"${t.name}"`).join(", ") || "none (call initTrackers first)"}`);
    }
    return found;
  }

  finish(): void {
    for (const tracker of this.trackers) tracker.finish();
    this.trackers = [];
  }
}
