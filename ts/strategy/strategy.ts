// What a strategy decides for the Accelerator: how a model is set up across processes,
// what happens around backward, the global gradient norm, and who writes which checkpoint
// files. Strategies receive the process state; they never reach back into the Accelerator.
import { clipGradNorm } from "../optim/clip.js";
import { Optimizer } from "../optim/optimizer.js";
import type { ModelLike, OptimizerLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import type { Tensor } from "../tensor.js";

/** How a strategy runs a prepared optimizer's step and state dicts (undefined: the optimizer's own). */
export interface OptimizerHooks {
  step(): void;
  stateDict(): unknown;
  loadStateDict(state: unknown): void;
}

export interface Strategy {
  readonly name: "single" | "ddp" | "zero";
  /** Called once per prepared model, after it moved to the device. */
  setupModel(model: ModelLike): void;
  /** Called once per prepared optimizer; ZeRO partitions it and takes over its step. */
  setupOptimizer(optimizer: OptimizerLike): OptimizerHooks | undefined;
  /** Before each backward pass; `sync` is false on micro-steps that only accumulate. */
  beforeBackward(sync: boolean): void;
  /** After each backward pass: gradients are final (averaged across processes, when synced). */
  afterBackward(): void;
  /** Before a prepared optimizer steps over `parameters`: throws if their gradients cannot be right. */
  beforeStep(parameters: Tensor[]): void;
  /** Clips the gradients of `parameters` to a total norm of `maxNorm` across processes; returns the norm before. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number;
  /** Whether this process writes the model, optimizer and other shared files of a checkpoint. */
  readonly writesSharedState: boolean;
  /** The model's full state dict (names to tensors), as `saveModel` and `getStateDict` give it. */
  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor>;
  /** After the prepared models' parameters were written (a checkpoint load): copies the strategy keeps follow them. */
  parametersLoaded(): void;
  /** Bytes of optimizer state this process holds for `optimizer` (ZeRO: its partition). */
  optimizerStateBytes(optimizer: OptimizerLike): number;
  /** Bytes of gradients this process holds beyond the parameters' own `.grad` (ZeRO-2's partitions). */
  partitionGradientBytes(): number;
  /** Forgets the prepared models (freeMemory, endTraining). */
  reset(): void;
}

/** One process holds everything: what `single` does, and what the data-parallel strategy inherits. */
export class SingleProcess implements Strategy {
  readonly name: "single" | "ddp" | "zero" = "single";
  protected readonly state: ProcessState;

  constructor(state: ProcessState) {
    this.state = state;
  }

  get writesSharedState(): boolean {
    return this.state.processIndex === 0;
  }

  setupModel(_model: ModelLike): void {}

  setupOptimizer(_optimizer: OptimizerLike): OptimizerHooks | undefined {
    return undefined;
  }

  beforeBackward(_sync: boolean): void {}

  afterBackward(): void {}

  beforeStep(_parameters: Tensor[]): void {}

  /** Gradients are whole and (under data parallelism) identical on every process, so the local norm is global. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number {
    return clipGradNorm(parameters, maxNorm, normType);
  }

  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor> {
    return model.stateDict();
  }

  parametersLoaded(): void {}

  optimizerStateBytes(optimizer: OptimizerLike): number {
    return optimizer instanceof Optimizer ? optimizer.core.stateBytes : 0;
  }

  partitionGradientBytes(): number {
    return 0;
  }

  reset(): void {}
}
