// What a strategy decides for the Accelerator: how a model is set up across processes,
// what happens around backward, the global gradient norm, and who writes which checkpoint
// files. Strategies receive the process state; they never reach back into the Accelerator.
import { clipGradNorm } from "../optim/clip.js";
import type { ModelLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import type { Tensor } from "../tensor.js";

export interface Strategy {
  readonly name: "single" | "ddp";
  /** Called once per prepared model, after it moved to the device. */
  setupModel(model: ModelLike): void;
  /** Before each backward pass; `sync` is false on micro-steps that only accumulate. */
  beforeBackward(sync: boolean): void;
  /** After each backward pass: gradients are final (averaged across processes, when synced). */
  afterBackward(): void;
  /** Clips the gradients of `parameters` to a total norm of `maxNorm` across processes; returns the norm before. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number;
  /** Whether this process writes the model, optimizer and other shared files of a checkpoint. */
  readonly writesSharedState: boolean;
  /** The model's full state dict (names to tensors), as `saveModel` and `getStateDict` give it. */
  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor>;
  /** Forgets the prepared models (freeMemory, endTraining). */
  reset(): void;
}

/** One process holds everything: what `single` does, and what the data-parallel strategy inherits. */
export class SingleProcess implements Strategy {
  readonly name: "single" | "ddp" = "single";
  protected readonly state: ProcessState;

  constructor(state: ProcessState) {
    this.state = state;
  }

  get writesSharedState(): boolean {
    return this.state.processIndex === 0;
  }

  setupModel(_model: ModelLike): void {}

  beforeBackward(_sync: boolean): void {}

  afterBackward(): void {}

  /** Gradients are whole and (under data parallelism) identical on every process, so the local norm is global. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number {
    return clipGradNorm(parameters, maxNorm, normType);
  }

  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor> {
    return model.stateDict();
  }

  reset(): void {}
}
