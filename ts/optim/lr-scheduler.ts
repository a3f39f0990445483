// Learning-rate schedulers with PyTorch's semantics (constructing one applies the step-0
// rate; `step()` advances one step), and Hugging Face transformers' warmup schedules.
// Schedules are scalar arithmetic: they write each param group's `lr`.

/** Anything with param groups whose `lr` can be read and assigned (every optimizer here). */
export interface SchedulableOptimizer {
  readonly paramGroups: readonly { lr: number }[];
}

/** JSON-able scheduler state, as PyTorch's `state_dict()` (last_epoch, base_lrs, _last_lr, _step_count). */
export interface LRSchedulerStateDict {
  lastEpoch: number;
  stepCount: number;
  baseLrs: number[];
  lastLr: number[];
  [extra: string]: number | number[];
}

// PyTorch records each group's first learning rate as group["initial_lr"], so a second
// scheduler on the same optimizer starts from it; the group objects are the keys here.
const initialLrs = new WeakMap<object, number>();

function checkNumber(op: string, name: string, value: unknown, min = 0): number {
  if (typeof value !== "number" || !(value >= min) || !Number.isFinite(value)) {
    throw new Error(`${op}: ${name} must be a finite number >= ${min}, got ${String(value)}`);
  }
  return value;
}

function checkNumbers(op: string, name: string, value: unknown, length: number): number[] {
  if (!Array.isArray(value) || value.length !== length || !value.every((v) => typeof v === "number")) {
    throw new Error(`${op}: ${name} must be an array of ${length} numbers (one per param group), got ${JSON.stringify(value)}`);
  }
  return [...value];
}

export abstract class LRScheduler {
  readonly optimizer: SchedulableOptimizer;
  /** Each group's learning rate when the first scheduler was attached. */
  baseLrs: number[];
  /** The index of the current step (0 right after construction). */
  lastEpoch = -1;
  protected stepCount = 0;
  #lastLr: number[] = [];
  protected readonly name: string;

  protected constructor(name: string, optimizer: SchedulableOptimizer) {
    this.name = name;
    if (optimizer === null || typeof optimizer !== "object" || !Array.isArray(optimizer.paramGroups)) {
      throw new Error(`${name}: expected an optimizer (with paramGroups), got ${String(optimizer)}`);
    }
    this.optimizer = optimizer;
    this.baseLrs = optimizer.paramGroups.map((group) => {
      if (!initialLrs.has(group)) initialLrs.set(group, group.lr);
      return initialLrs.get(group) as number;
    });
  }

  /** Applies the step-0 learning rates; concrete schedulers call it last in their constructor. */
  protected initialStep(): void {
    this.stepCount = 0;
    this.step();
  }

  /** The learning rate of each param group at step `lastEpoch`. */
  protected abstract computeLr(): number[];

  /** Advances one step and writes the new learning rates into the optimizer. */
  step(): void {
    this.stepCount += 1;
    this.lastEpoch += 1;
    const lrs = this.computeLr();
    const groups = this.optimizer.paramGroups;
    groups.forEach((group, i) => {
      group.lr = lrs[i];
    });
    this.#lastLr = groups.map((group) => group.lr);
  }

  /** The learning rates set by the last `step()` (or by construction). */
  getLastLr(): number[] {
    return [...this.#lastLr];
  }

  stateDict(): LRSchedulerStateDict {
    return { lastEpoch: this.lastEpoch, stepCount: this.stepCount, baseLrs: [...this.baseLrs], lastLr: this.getLastLr() };
  }

  /** Restores the step counter and rates saved by `stateDict()` (the optimizer's own lr comes from its state dict). */
  loadStateDict(stateDict: LRSchedulerStateDict): void {
    const op = `${this.name}.loadStateDict`;
    if (stateDict === null || typeof stateDict !== "object") throw new Error(`${op}: expected a state dict object`);
    const groups = this.optimizer.paramGroups.length;
    const lastEpoch = checkNumber(op, "lastEpoch", stateDict.lastEpoch, -1);
    const stepCount = checkNumber(op, "stepCount", stateDict.stepCount);
    const baseLrs = checkNumbers(op, "baseLrs", stateDict.baseLrs, groups);
    const lastLr = checkNumbers(op, "lastLr", stateDict.lastLr, groups);
    this.lastEpoch = lastEpoch;
    this.stepCount = stepCount;
    this.baseLrs = baseLrs;
    this.#lastLr = lastLr;
  }
}

/** The learning-rate multiplier at a step. */
export type LrLambda = (step: number) => number;

/** lr = baseLr · lrLambda(step), one lambda for all groups or one per group. */
export class LambdaLR extends LRScheduler {
  readonly lrLambdas: LrLambda[];

  constructor(optimizer: SchedulableOptimizer, lrLambda: LrLambda | LrLambda[]) {
    super("LambdaLR", optimizer);
    const groups = optimizer.paramGroups.length;
    const lambdas = Array.isArray(lrLambda) ? lrLambda : Array.from({ length: groups }, () => lrLambda);
    if (lambdas.length !== groups) {
      throw new Error(`LambdaLR: expected ${groups} lrLambdas (one per param group), got ${lambdas.length}`);
    }
    lambdas.forEach((f, i) => {
      if (typeof f !== "function") throw new Error(`LambdaLR: lrLambda${Array.isArray(lrLambda) ? `[${i}]` : ""} is not a function`);
    });
    this.lrLambdas = lambdas;
    this.initialStep();
  }

  protected computeLr(): number[] {
    return this.baseLrs.map((base, i) => {
      const factor = this.lrLambdas[i](this.lastEpoch);
      if (typeof factor !== "number" || Number.isNaN(factor)) {
        throw new Error(`LambdaLR: lrLambda(${this.lastEpoch}) returned ${String(factor)}, not a number`);
      }
      return base * factor;
    });
  }
}

export interface StepLROptions {
  /** Steps between decays (a positive integer). */
  stepSize: number;
  /** Multiplier applied every `stepSize` steps (default 0.1). */
  gamma?: number;
}

/** Multiplies each group's lr by `gamma` every `stepSize` steps (PyTorch's chainable form). */
export class StepLR extends LRScheduler {
  stepSize: number;
  gamma: number;

  constructor(optimizer: SchedulableOptimizer, options: StepLROptions) {
    super("StepLR", optimizer);
    const { stepSize, gamma = 0.1 } = options ?? ({} as StepLROptions);
    if (!Number.isInteger(stepSize) || stepSize < 1) {
      throw new Error(`StepLR: stepSize must be a positive integer, got ${String(stepSize)}`);
    }
    if (typeof gamma !== "number" || Number.isNaN(gamma)) throw new Error(`StepLR: gamma must be a number, got ${String(gamma)}`);
    this.stepSize = stepSize;
    this.gamma = gamma;
    this.initialStep();
  }

  protected computeLr(): number[] {
    const groups = this.optimizer.paramGroups;
    if (this.lastEpoch === 0 || this.lastEpoch % this.stepSize !== 0) return groups.map((g) => g.lr);
    return groups.map((g) => g.lr * this.gamma);
  }

  override stateDict(): LRSchedulerStateDict {
    return { ...super.stateDict(), stepSize: this.stepSize, gamma: this.gamma };
  }

  override loadStateDict(stateDict: LRSchedulerStateDict): void {
    const op = "StepLR.loadStateDict";
    const { stepSize, gamma } = stateDict ?? {};
    if (!Number.isInteger(stepSize) || (stepSize as number) < 1) throw new Error(`${op}: stepSize must be a positive integer, got ${String(stepSize)}`);
    if (typeof gamma !== "number") throw new Error(`${op}: gamma must be a number, got ${String(gamma)}`);
    super.loadStateDict(stateDict);
    this.stepSize = stepSize as number;
    this.gamma = gamma;
  }
}

function warmupArgs(op: string, numWarmupSteps: number, numTrainingSteps?: number): void {
  checkNumber(op, "numWarmupSteps", numWarmupSteps);
  if (numTrainingSteps !== undefined) checkNumber(op, "numTrainingSteps", numTrainingSteps);
}

/** A constant learning rate (transformers' get_constant_schedule). */
export function getConstantSchedule(optimizer: SchedulableOptimizer): LambdaLR {
  return new LambdaLR(optimizer, () => 1);
}

/** Rises linearly from 0 to the optimizer's lr over `numWarmupSteps`, then stays (transformers' formula). */
export function getConstantScheduleWithWarmup(optimizer: SchedulableOptimizer, numWarmupSteps: number): LambdaLR {
  warmupArgs("getConstantScheduleWithWarmup", numWarmupSteps);
  return new LambdaLR(optimizer, (step) => (step < numWarmupSteps ? step / Math.max(1, numWarmupSteps) : 1));
}

/** Linear warmup over `numWarmupSteps`, then linear decay to 0 at `numTrainingSteps` (transformers' formula). */
export function getLinearScheduleWithWarmup(
  optimizer: SchedulableOptimizer,
  numWarmupSteps: number,
  numTrainingSteps: number,
): LambdaLR {
  warmupArgs("getLinearScheduleWithWarmup", numWarmupSteps, numTrainingSteps);
  return new LambdaLR(optimizer, (step) => {
    if (step < numWarmupSteps) return step / Math.max(1, numWarmupSteps);
    return Math.max(0, (numTrainingSteps - step) / Math.max(1, numTrainingSteps - numWarmupSteps));
  });
}

/**
 * Linear warmup over `numWarmupSteps`, then cosine decay following `numCycles` cosine waves
 * (0.5: one half-wave from the lr to 0 at `numTrainingSteps`), as transformers' formula.
 */
export function getCosineScheduleWithWarmup(
  optimizer: SchedulableOptimizer,
  numWarmupSteps: number,
  numTrainingSteps: number,
  numCycles = 0.5,
): LambdaLR {
  warmupArgs("getCosineScheduleWithWarmup", numWarmupSteps, numTrainingSteps);
  checkNumber("getCosineScheduleWithWarmup", "numCycles", numCycles);
  return new LambdaLR(optimizer, (step) => {
    if (step < numWarmupSteps) return step / Math.max(1, numWarmupSteps);
    const progress = (step - numWarmupSteps) / Math.max(1, numTrainingSteps - numWarmupSteps);
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * numCycles * 2 * progress)));
  });
}
