// Gradient-accumulation state shared by the Accelerator, its strategy and its loaders:
// whether this micro-step synchronises gradients, and which prepared loader is running.
import { describe } from "./errors.js";
import type { LoaderLike } from "./prepared.js";

export class GradientState {
  readonly accumulationSteps: number;
  /** False on micro-steps that only accumulate gradients (see `accumulate`). */
  syncGradients = true;
  /** Micro-steps counted by `accumulate`, saved and restored with the state. */
  step = 0;
  /** The prepared loader whose loop is running (the innermost, when loops nest). */
  activeLoader: LoaderLike | undefined;

  constructor(accumulationSteps: number) {
    if (!Number.isSafeInteger(accumulationSteps) || accumulationSteps < 1) {
      throw new Error(`Accelerator: gradientAccumulationSteps must be a positive integer, got ${describe(accumulationSteps)}`);
    }
    this.accumulationSteps = accumulationSteps;
  }

  /** True while the active loader hands out the last batch of its epoch. */
  get endOfDataloader(): boolean {
    return this.activeLoader?.endOfDataloader ?? false;
  }

  /** Real samples in the active loader's last global batch (0 when none was padded). */
  get remainder(): number {
    return this.endOfDataloader ? (this.activeLoader?.remainder ?? 0) : 0;
  }

  /** Starts a micro-step: it syncs every `accumulationSteps` calls and at the end of the loader. */
  beginMicroStep(): void {
    if (this.endOfDataloader) {
      this.step = 0;
      this.syncGradients = true;
    } else {
      this.step += 1;
      this.syncGradients = this.step % this.accumulationSteps === 0;
    }
  }

  /** Makes `loader` the active one while `iterate` runs, then restores the outer one. */
  *iterateAsActive<T>(loader: LoaderLike, iterate: () => Iterator<T>): Generator<T, void, undefined> {
    const outer = this.activeLoader;
    this.activeLoader = loader;
    try {
      yield* { [Symbol.iterator]: iterate };
    } finally {
      this.activeLoader = outer;
    }
  }

  reset(): void {
    this.activeLoader = undefined;
    this.step = 0;
    this.syncGradients = true;
  }
}
