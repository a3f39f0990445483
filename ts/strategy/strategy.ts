// What a strategy decides for the Accelerator: how a model is set up across processes,
// what happens around backward, the global gradient norm, and who writes which checkpoint
// files. Strategies receive the process state; they never reach back into the Accelerator.
import type { OptimizerCore } from "../../index.js";
import { clipGradNorm } from "../optim/clip.js";
import { Optimizer } from "../optim/optimizer.js";
import type { ModelLike, OptimizerLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import type { Tensor } from "../tensor.js";

/** Bytes held on the device (a GPU) and on the host. */
export interface HeldBytes {
  device: number;
  host: number;
}

const ELEMENT_BYTES: Record<string, number> = {
  float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, bool: 1, uint8: 1,
};

/** The bytes of `tensors` (nulls skipped), by where they live. */
export function bytesOf(tensors: (Tensor | null)[]): HeldBytes {
  const held = { device: 0, host: 0 };
  for (const t of tensors) {
    if (t === null) continue;
    held[t.device === "cpu" ? "host" : "device"] += t.numel * ELEMENT_BYTES[t.dtype];
  }
  return held;
}

/** What ZeRO's engine optimizers (stage 1's partitions, stages 2-3's shards) share. */
interface PartitionedOptimizer {
  step(core: OptimizerCore): void;
  consolidateState(core: OptimizerCore): void;
  releaseState(core: OptimizerCore): void;
  takeState(core: OptimizerCore): void;
}

/**
 * The hooks of an optimizer whose state ZeRO partitions: `zero` steps it, and every process
 * gathers the whole state for a state dict (a checkpoint then loads on any number of processes).
 */
export function partitionedHooks<O extends object>(optimizer: Optimizer<O>, zero: PartitionedOptimizer): OptimizerHooks {
  const core = optimizer.core;
  return {
    step: () => zero.step(core),
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

/** How a strategy runs a prepared optimizer's step and state dicts (undefined: the optimizer's own). */
export interface OptimizerHooks {
  step(): void;
  /** After the optimizer's own zeroGrad: gradients the strategy holds apart are dropped too. */
  zeroGrad?(): void;
  stateDict(): unknown;
  loadStateDict(state: unknown): void;
}

export interface Strategy {
  readonly name: "single" | "ddp" | "zero";
  /** Called once per prepared model, after it moved to the device. */
  setupModel(model: ModelLike): void;
  /** Called once per prepared optimizer; ZeRO partitions it and takes over its step. */
  setupOptimizer(optimizer: OptimizerLike): OptimizerHooks | undefined;
  /**
   * Before each backward pass; `sync` is false on micro-steps that only accumulate.
   * `severalPasses`: the gradients arrive over several passes (activation checkpointing), so a
   * parameter used inside and outside the checkpointed modules accumulates more than once.
   */
  beforeBackward(sync: boolean, severalPasses: boolean): void;
  /** After each backward pass: gradients are final (averaged across processes, when synced). */
  afterBackward(): void;
  /** Before a prepared optimizer steps over `parameters`: throws if their gradients cannot be right. */
  beforeStep(parameters: Tensor[]): void;
  /**
   * Where the gradients are when the strategy holds them apart from the parameters' `.grad`
   * (ZeRO-2/3: this process's partitions, after backward), for fp16 unscaling; else undefined.
   */
  heldGradients(parameters: Tensor[]): Tensor[] | undefined;
  /** Clips the gradients of `parameters` to a total norm of `maxNorm` across processes; returns the norm before. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number;
  /** Whether this process writes the model, optimizer and other shared files of a checkpoint. */
  readonly writesSharedState: boolean;
  /** The model's full state dict (names to tensors), as `saveModel` and `getStateDict` give it. */
  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor>;
  /**
   * Runs `load`, which writes the prepared models' parameters (a checkpoint load); the strategy
   * makes them writable first (ZeRO-3 gathers them) and the copies it keeps follow them after.
   */
  loadParameters(load: () => void): void;
  /** Bytes of the prepared models' `parameters` this process holds (ZeRO-3: its shards). */
  parameterBytes(parameters: Tensor[]): HeldBytes;
  /** Bytes of gradients this process holds for `parameters` (their `.grad`, and ZeRO's partitions). */
  gradientBytes(parameters: Tensor[]): HeldBytes;
  /** Bytes of optimizer state this process holds for `optimizer` (ZeRO: its partition). */
  optimizerStateBytes(optimizer: OptimizerLike): HeldBytes;
  /** Forgets the prepared models (freeMemory, endTraining). */
  reset(): void;
  /**
   * Before `op` (one of AGREED_OPERATIONS), which every process must reach together: checks
   * that they did, an Error naming where the others are otherwise (ZeRO-3, whose gathers of
   * different sizes would otherwise end the process in Gloo, or hang under NCCL).
   */
  agree(op: AgreedOperation): void;
}

/** The operations whose arrival processes compare under ZeRO-3 (their codes are their indices). */
export const AGREED_OPERATIONS = ["getStateDict", "saveModel", "saveState", "loadState", "endTraining", "freeMemory", "waitForEveryone"] as const;
export type AgreedOperation = (typeof AGREED_OPERATIONS)[number];

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

  beforeBackward(_sync: boolean, _severalPasses: boolean): void {}

  afterBackward(): void {}

  beforeStep(_parameters: Tensor[]): void {}

  heldGradients(_parameters: Tensor[]): Tensor[] | undefined {
    return undefined;
  }

  /** Gradients are whole and (under data parallelism) identical on every process, so the local norm is global. */
  clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number {
    return clipGradNorm(parameters, maxNorm, normType);
  }

  fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor> {
    return model.stateDict();
  }

  loadParameters(load: () => void): void {
    load();
  }

  parameterBytes(parameters: Tensor[]): HeldBytes {
    return bytesOf(parameters);
  }

  gradientBytes(parameters: Tensor[]): HeldBytes {
    return bytesOf(parameters.map((p) => p.grad));
  }

  /** The engine optimizer's state, on the parameters' device. */
  optimizerStateBytes(optimizer: OptimizerLike): HeldBytes {
    const bytes = optimizer instanceof Optimizer ? optimizer.core.stateBytes : 0;
    const onHost = optimizer instanceof Optimizer && optimizer.paramGroups.every((g) => g.params.every((p) => p.device === "cpu"));
    return onHost ? { device: 0, host: bytes } : { device: bytes, host: 0 };
  }

  reset(): void {}

  agree(_op: AgreedOperation): void {}
}
