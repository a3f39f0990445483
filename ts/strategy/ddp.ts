// Data parallelism: every process starts from process 0's parameters and holds a whole
// model; gradients are averaged across processes in buckets during backward (the core's
// reducer, crates/core/shim/reducer.cpp).
import type { DdpReducer } from "../../index.js";
import { native } from "../native.js";
import type { ModelLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import { SingleProcess } from "./strategy.js";

export class DataParallel extends SingleProcess {
  override readonly name: "ddp" | "zero" = "ddp";
  readonly #bucketBytes: number;
  readonly #reducers: DdpReducer[] = [];

  constructor(state: ProcessState, bucketBytes: number) {
    super(state);
    this.#bucketBytes = bucketBytes;
  }

  override setupModel(model: ModelLike): void {
    native.distBroadcastParameters(model.parameters());
    this.#reducers.push(new native.DdpReducer(model.parameters(), this.#bucketBytes));
  }

  override beforeBackward(sync: boolean): void {
    for (const reducer of this.#reducers) reducer.prepare(sync);
  }

  override afterBackward(): void {
    for (const reducer of this.#reducers) reducer.finish();
  }

  override reset(): void {
    this.#reducers.length = 0;
  }
}
