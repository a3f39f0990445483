// ZeRO stage 1 (DeepSpeed's zero_optimization.stage 1): gradients are averaged whole, as data
// parallelism does, but each process keeps the optimizer state (and a master copy) of one
// partition of the parameters only, updates it, and all-gathers the updated parameters. The
// partitioning is the core's (crates/core/src/dist/zero.rs); stages 2 and 3, which partition
// the gradients too, are the sharder's (./zero3.ts).
import type { OptimizerCore, ZeroCore } from "../../index.js";
import { native } from "../native.js";
import { Optimizer } from "../optim/optimizer.js";
import type { OptimizerLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import { DataParallel } from "./ddp.js";
import { partitionedHooks, type HeldBytes, type OptimizerHooks } from "./strategy.js";

export class ZeroRedundancy extends DataParallel {
  override readonly name = "zero";
  readonly stage = 1;
  readonly #partitions = new Map<OptimizerLike, { zero: ZeroCore; core: OptimizerCore }>();
  readonly #offloadOptimizer: boolean;

  /** `offloadOptimizer` keeps the partitions' master copies and optimizer state on the host, where the update runs. */
  constructor(state: ProcessState, bucketBytes: number, offloadOptimizer: boolean) {
    super(state, bucketBytes);
    this.#offloadOptimizer = offloadOptimizer;
  }

  override setupOptimizer(optimizer: OptimizerLike): OptimizerHooks {
    if (!(optimizer instanceof Optimizer)) {
      throw new Error(`prepare: ZeRO partitions the optimizers of optim (SGD, Adam, AdamW); got ${optimizer.constructor.name}`);
    }
    const core = optimizer.core;
    const zero = new native.ZeroCore(core, this.#offloadOptimizer);
    this.#partitions.set(optimizer, { zero, core });
    return partitionedHooks(optimizer, zero);
  }

  /** The master partitions follow the parameters a checkpoint wrote. */
  override loadParameters(load: () => void): void {
    load();
    for (const { zero } of this.#partitions.values()) zero.refreshMasters();
  }

  override optimizerStateBytes(optimizer: OptimizerLike): HeldBytes {
    const partition = this.#partitions.get(optimizer);
    return partition ? partition.zero.optimizerStateBytes() : super.optimizerStateBytes(optimizer);
  }

  override reset(): void {
    super.reset();
    this.#partitions.clear();
  }
}
