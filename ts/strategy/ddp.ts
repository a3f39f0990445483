// Data parallelism: every process starts from process 0's parameters and holds a whole
// model; gradients are averaged across processes in buckets during backward (the core's
// reducer, crates/core/shim/reducer.cpp).
import type { DdpReducer } from "../../index.js";
import { native } from "../native.js";
import type { ModelLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import type { Tensor } from "../tensor.js";
import { SingleProcess } from "./strategy.js";

export class DataParallel extends SingleProcess {
  override readonly name: "ddp" | "zero" = "ddp";
  readonly #bucketBytes: number;
  readonly #reducers: DdpReducer[] = [];
  /** How many times `accelerator.backward` ran, and at which count each parameter last stepped. */
  #backwards = 0;
  readonly #steppedAt = new WeakMap<Tensor, number>();

  constructor(state: ProcessState, bucketBytes: number) {
    super(state);
    this.#bucketBytes = bucketBytes;
  }

  override setupModel(model: ModelLike): void {
    native.distBroadcastParameters(model.parameters());
    this.#reducers.push(new native.DdpReducer(model.parameters(), this.#bucketBytes));
  }

  /** Over several passes, buckets are averaged after the last one rather than as they fill. */
  override beforeBackward(sync: boolean, severalPasses: boolean): void {
    this.markBackward();
    for (const reducer of this.#reducers) reducer.prepare(sync, severalPasses);
  }

  /** Records that `accelerator.backward` ran (for `beforeStep`). */
  protected markBackward(): void {
    this.#backwards += 1;
  }

  /**
   * Gradients from `loss.backward()` are this process's alone; stepping on them would let the
   * processes' models drift apart without a word, so that is an Error.
   */
  override beforeStep(parameters: Tensor[]): void {
    // Stale: no accelerator.backward since these parameters last stepped (or ever). Two optimizers
    // stepping after one backward each step their own parameters once.
    const stale = this.#backwards === 0 || parameters.some((p) => this.#steppedAt.get(p) === this.#backwards);
    for (const p of parameters) this.#steppedAt.set(p, this.#backwards);
    if (!stale || !parameters.some((p) => p.grad !== null)) return;
    throw new Error(
      `step: the gradients come from loss.backward(), which does not average them across the ${this.state.numProcesses} processes; ` +
        "call accelerator.backward(loss) instead",
    );
  }

  override afterBackward(): void {
    for (const reducer of this.#reducers) reducer.finish();
  }

  override reset(): void {
    this.#reducers.length = 0;
  }
}
