// ZeRO stages 1 and 2 (DeepSpeed's zero_optimization.stage, FSDP's SHARD_GRAD_OP): each
// process keeps the optimizer state of one partition of the parameters; stage 2 also keeps
// only that partition of the averaged gradients. The partitioning is the core's
// (crates/core/src/dist/zero.rs); this file decides when each part runs.
import type { OptimizerCore, ZeroCore } from "../../index.js";
import { native } from "../native.js";
import { Optimizer } from "../optim/optimizer.js";
import type { ModelLike, OptimizerLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import type { Tensor } from "../tensor.js";
import { DataParallel } from "./ddp.js";
import type { HeldBytes, OptimizerHooks } from "./strategy.js";

export type ZeroStageNumber = 1 | 2;

export class ZeroRedundancy extends DataParallel {
  override readonly name = "zero";
  readonly stage: ZeroStageNumber;
  readonly #partitions = new Map<OptimizerLike, { zero: ZeroCore; core: OptimizerCore }>();
  #synced = false;

  readonly #offloadOptimizer: boolean;

  /** `offloadOptimizer` keeps the partitions' master copies and optimizer state on the host, where the update runs. */
  constructor(state: ProcessState, bucketBytes: number, stage: ZeroStageNumber, offloadOptimizer: boolean) {
    super(state, bucketBytes);
    this.stage = stage;
    this.#offloadOptimizer = offloadOptimizer;
  }

  /** Stage 1 averages whole gradients as data parallelism does; stage 2 only broadcasts the parameters. */
  override setupModel(model: ModelLike): void {
    if (this.stage === 1) super.setupModel(model);
    else native.distBroadcastParameters(model.parameters());
  }

  override setupOptimizer(optimizer: OptimizerLike): OptimizerHooks {
    if (!(optimizer instanceof Optimizer)) {
      throw new Error(`prepare: ZeRO partitions the optimizers of optim (SGD, Adam, AdamW); got ${optimizer.constructor.name}`);
    }
    const core = optimizer.core;
    const zero = new native.ZeroCore(core, this.stage, this.#offloadOptimizer);
    this.#partitions.set(optimizer, { zero, core });
    return {
      step: () => zero.step(core),
      // Every process gathers the whole state (a checkpoint then loads on any number of processes).
      stateDict: () => {
        zero.consolidateState(core);
        try {
          return optimizer.stateDict();
        } finally {
          zero.releaseState(core);
        }
      },
      loadStateDict: (state: unknown) => {
        optimizer.loadStateDict(state as Parameters<typeof optimizer.loadStateDict>[0]);
        zero.takeState(core);
      },
    };
  }

  override beforeBackward(sync: boolean): void {
    this.#synced = sync;
    if (this.stage === 1) super.beforeBackward(sync);
    else this.markBackward();
  }

  override afterBackward(): void {
    if (this.stage === 1) return super.afterBackward();
    if (!this.#synced) return;
    for (const { zero } of this.#partitions.values()) zero.reduceGradients();
  }

  /** Stage 2: the partitions of every prepared optimizer's gradients. */
  override heldGradients(): Tensor[] | undefined {
    if (this.stage === 1) return undefined;
    return [...this.#partitions.values()].flatMap(({ zero }) => zero.gradients());
  }

  /** Stage 2 clips the partitions of every prepared optimizer, by their norm across processes. */
  override clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number {
    if (this.stage === 1) return super.clipGradNorm(parameters, maxNorm, normType);
    let norm = 0;
    for (const { zero } of this.#partitions.values()) norm = zero.clipGradNorm(maxNorm, normType);
    return norm;
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

  override gradientBytes(parameters: Tensor[]): HeldBytes {
    const held = super.gradientBytes(parameters);
    for (const { zero } of this.#partitions.values()) {
      const partition = zero.gradientBytes();
      held.device += partition.device;
      held.host += partition.host;
    }
    return held;
  }

  override reset(): void {
    super.reset();
    this.#partitions.clear();
  }
}
