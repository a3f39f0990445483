// What `prepare` recognises (models, optimizers, schedulers, loaders, by shape) and the
// wrappers it returns for optimizers and schedulers, which route `step`/`zeroGrad`
// through the Accelerator's rules without changing the user's objects.
import type { StateValue } from "./checkpoint.js";
import type { Tensor } from "./tensor.js";

/** An object with stateDict()/loadStateDict(), which checkpoints carry. */
export interface Stateful {
  stateDict(): StateValue | Record<string, unknown>;
  loadStateDict(state: never): void;
}
export interface ModelLike extends Stateful {
  forward(...args: never[]): unknown;
  parameters(): Tensor[];
  to(device: string): unknown;
}
export interface OptimizerLike extends Stateful {
  step(): void;
  zeroGrad(setToNone?: boolean): void;
  paramGroups?: readonly { readonly params: readonly Tensor[] }[];
}
export interface SchedulerLike extends Stateful {
  step(): void;
  getLastLr(): number[];
}
export interface LoaderLike extends Stateful, Iterable<unknown> {
  length: number;
  endOfDataloader?: boolean;
  remainder?: number;
  options?: { disposeBatches?: boolean; stepScope?: boolean; batchSize?: number };
  /** A copy delivering batches to `device`, sharded for this process (see data.DataLoader). */
  withOptions?(overrides: {
    device?: string;
    disposeBatches?: boolean;
    stepScope?: boolean;
    shard?: { numProcesses: number; processIndex: number; evenBatches?: boolean; splitBatches?: boolean };
  }): LoaderLike;
}

export const hasMethods = (obj: unknown, ...methods: string[]): boolean =>
  obj !== null && typeof obj === "object" && methods.every((m) => typeof (obj as Record<string, unknown>)[m] === "function");
export const isScheduler = (o: unknown): o is SchedulerLike => hasMethods(o, "step", "getLastLr", "stateDict");
export const isOptimizer = (o: unknown): o is OptimizerLike => !isScheduler(o) && hasMethods(o, "step", "zeroGrad", "stateDict");
export const isModel = (o: unknown): o is ModelLike => hasMethods(o, "forward", "parameters", "to", "stateDict");
export const isLoader = (o: unknown): o is LoaderLike =>
  o !== null && typeof o === "object" && typeof (o as Record<symbol, unknown>)[Symbol.iterator] === "function" && hasMethods(o, "stateDict");

/** The objects one Accelerator prepared, in preparation order (checkpoint files are numbered by it). */
export class PreparedObjects {
  readonly models: ModelLike[] = [];
  readonly optimizers: OptimizerLike[] = [];
  readonly schedulers: SchedulerLike[] = [];
  readonly loaders: LoaderLike[] = [];
  readonly customObjects: Stateful[] = [];
  /** The user's optimizer behind each prepared wrapper. */
  readonly unwrapped = new Map<OptimizerLike, OptimizerLike>();

  clear(): void {
    for (const list of [this.models, this.optimizers, this.schedulers, this.loaders]) list.length = 0;
    this.unwrapped.clear();
  }
}

/**
 * `target` seen through a wrapper whose `overrides` replace some methods; every other
 * property is the target's own (methods bound to it), so the wrapper is the user's object in
 * every other respect, `instanceof` included.
 */
export function wrapWith<T extends object>(target: T, overrides: Partial<Record<keyof T, unknown>>): T {
  const bound = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(object, key) {
      if (Object.prototype.hasOwnProperty.call(overrides, key)) return overrides[key as keyof T];
      const value = Reflect.get(object, key, object) as unknown;
      if (typeof value !== "function") return value;
      if (!bound.has(key)) bound.set(key, (value as (...args: unknown[]) => unknown).bind(object));
      return bound.get(key);
    },
    set(object, key, value) {
      return Reflect.set(object, key, value, object);
    },
  });
}
