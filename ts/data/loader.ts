// DataLoader: iterates a dataset in batches, seeded shuffling identical on every
// process, data-parallel sharding, resumable epochs. Over a TensorDataset the
// batches are gathered (and moved to `device`) on a background Rust thread.
import { checkOptionNames, describe, optionNames, withName } from "../errors.js";
import { native } from "../native.js";
import type { NativeDataLoader } from "../../index.js";
import { closeScope, openScope, type Device, type Scope } from "../tensor.js";
import { defaultCollate, disposeTensors, toDevice, type Collated } from "./collate.js";
import { TensorDataset, nativeDataset, type DatasetLike } from "./dataset.js";

/** How batches are divided between data-parallel processes (Accelerate's `BatchSamplerShard`). */
export interface ShardOptions {
  numProcesses: number;
  processIndex: number;
  /** Split each batch into `numProcesses` pieces instead of dealing whole batches round-robin. Default false. */
  splitBatches?: boolean;
  /** Complete the last round with samples from the start of the epoch so all processes get equal batches. Default true. */
  evenBatches?: boolean;
}

export interface DataLoaderOptions<T, B> {
  /** Samples per batch (per process when sharded without `splitBatches`). Default 1. */
  batchSize?: number;
  /** Visit samples in a random order fixed by (`seed`, epoch). Default false. */
  shuffle?: boolean;
  /** Drop the last batch when it is short. Default false. */
  dropLast?: boolean;
  /** Seed of the shuffle; every process with the same seed and epoch gets the same order. Default 0. */
  seed?: number;
  /** Makes a batch from samples. Default: `defaultCollate`; a TensorDataset without one is batched in Rust. */
  collate?: (samples: T[]) => B;
  /** Where batches are delivered ("cpu", "cuda", "cuda:N"). Default: where the data is. */
  device?: Device;
  /** This process's share of every global batch. Default: one process, no sharding. */
  shard?: ShardOptions;
  /**
   * Free every tensor made during a step (the batch, the forward pass, the loss, ...)
   * when the loop asks for the next batch, or ends, or breaks; a tensor to use later
   * is kept with `keep()` or made before the loop. Parameters, gradients, optimizer
   * state and what a Module holds are never freed by it. Default false here;
   * `accelerator.prepare` turns it on unless it is set, because a synchronous loop
   * never lets the garbage collector free tensors, and V8 does not see GPU memory.
   */
  stepScope?: boolean;
  /**
   * Without `stepScope`: free the tensors the loader made for a batch when the loop asks
   * for the next one (or finishes). Breaking out of the loop keeps the current batch.
   * Batches from a custom `collate` are yours, except copies moved to `device`. Default false.
   */
  disposeBatches?: boolean;
}

const DATA_LOADER_OPTIONS = optionNames<DataLoaderOptions<unknown, unknown>>()([
  "batchSize", "shuffle", "dropLast", "seed", "collate", "device", "shard", "stepScope", "disposeBatches",
]);

/** Where a loader stands: its epoch, and how many of that epoch's batches it handed out. */
export interface DataLoaderState {
  epoch: number;
  batchesSeen: number;
}

function checkCount(name: string, value: number, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`DataLoader: ${name} must be an integer >= ${min}, got ${describe(value)}`);
  }
  return value;
}

function checkFlag(name: string, value: unknown): boolean | undefined {
  if (value !== undefined && typeof value !== "boolean") throw new Error(`DataLoader: ${name} must be a boolean, got ${describe(value)}`);
  return value;
}

function createNative<T, B>(dataset: DatasetLike<T>, options: DataLoaderOptions<T, B>): NativeDataLoader {
  const shard = options.shard ?? { numProcesses: 1, processIndex: 0 };
  return new native.NativeDataLoader(checkCount("the dataset length", dataset.length, 0), {
    batchSize: checkCount("batchSize", options.batchSize ?? 1, 1),
    shuffle: checkFlag("shuffle", options.shuffle) ?? false,
    dropLast: checkFlag("dropLast", options.dropLast) ?? false,
    seed: checkCount("seed", options.seed ?? 0, Number.MIN_SAFE_INTEGER),
    numProcesses: checkCount("shard.numProcesses", shard.numProcesses, 1),
    processIndex: checkCount("shard.processIndex", shard.processIndex, 0),
    splitBatches: checkFlag("shard.splitBatches", shard.splitBatches) ?? false,
    evenBatches: checkFlag("shard.evenBatches", shard.evenBatches) ?? true,
    device: options.device,
  });
}

/**
 * Iterates `dataset` in batches: `for (const { x, y } of loader) ...`. Each full
 * pass is one epoch; the next pass runs the next epoch (a new order when
 * shuffling). Leaving a loop early (`break`) stops the prefetch thread; the next
 * loop starts the epoch again, unless `loadStateDict` set a resume point.
 */
export class DataLoader<T, B = Collated<T>> implements Iterable<B> {
  readonly dataset: DatasetLike<T>;
  readonly options: Readonly<DataLoaderOptions<T, B>>;
  #native: NativeDataLoader;
  #skip = 0;

  constructor(dataset: DatasetLike<T>, options: DataLoaderOptions<T, B> = {}) {
    checkOptionNames("DataLoader", options, DATA_LOADER_OPTIONS);
    this.dataset = dataset;
    this.options = { ...options };
    this.#native = withName("DataLoader", () => createNative(dataset, this.options));
  }

  /** Batches per epoch for this process (less the skipped ones, after `skipFirstBatches`). */
  get length(): number {
    return Math.max(0, this.#native.length - this.#skip);
  }

  get batchSize(): number {
    return this.options.batchSize ?? 1;
  }

  /** Samples per step across all processes: `batchSize`, times `numProcesses` unless `splitBatches`. */
  get totalBatchSize(): number {
    return this.#native.totalBatchSize;
  }

  /**
   * Real samples in the last global batch: `dataset.length % totalBatchSize`
   * (0 when it divides evenly), or -1 with `dropLast`. `gatherForMetrics` drops
   * the padding beyond it.
   */
  get remainder(): number {
    return this.#native.remainder;
  }

  /** The epoch the next (or current) pass runs. */
  get epoch(): number {
    return this.#native.state().epoch;
  }

  /** True while the batch just handed out is the last of its epoch. */
  get endOfDataloader(): boolean {
    return this.#native.endOfDataloader;
  }

  /** Makes the next pass run `epoch` (its order) from the start. */
  setEpoch(epoch: number): void {
    this.#native.setEpoch(checkCount("epoch", epoch, 0));
  }

  stateDict(): DataLoaderState {
    return this.#native.state();
  }

  /** Makes the next pass resume `state.epoch` right after its first `state.batchesSeen` batches. */
  loadStateDict(state: DataLoaderState): void {
    this.#native.loadState({
      epoch: checkCount("epoch", state.epoch, 0),
      batchesSeen: checkCount("batchesSeen", state.batchesSeen, 0),
    });
  }

  /**
   * A loader that skips the first `n` batches of every pass (Accelerate's
   * `skip_first_batches`). It shares this loader's epoch counter: after it
   * completes the epoch, iterate this loader again for the following ones.
   */
  skipFirstBatches(n: number): DataLoader<T, B> {
    const skipping = new DataLoader(this.dataset, this.options);
    skipping.#native = this.#native;
    skipping.#skip = checkCount("skipFirstBatches", n, 0);
    return skipping;
  }

  /** A new loader over the same dataset with some options replaced (epoch progress starts afresh). */
  withOptions(overrides: Partial<DataLoaderOptions<T, B>>): DataLoader<T, B> {
    return new DataLoader(this.dataset, { ...this.options, ...overrides });
  }

  *[Symbol.iterator](): Generator<B, void, undefined> {
    const steps = new StepScopes(this.options.stepScope ?? false, this.#skip);
    const disposeBatches = (this.options.disposeBatches ?? false) && !steps.enabled;
    const { dataset } = this;
    if (dataset instanceof TensorDataset && this.options.collate === undefined) {
      const pass = this.#native.iterTensors(nativeDataset(dataset), this.#skip);
      const keys = dataset.keys;
      try {
        const next = () => pass.nextBatch();
        for (let batch = steps.next(next); batch !== null; batch = steps.next(next)) {
          const tensors = batch;
          yield Object.fromEntries(keys.map((key, i) => [key, tensors[i]])) as B;
          if (disposeBatches) for (const tensor of tensors) tensor.dispose();
        }
      } finally {
        steps.end();
        pass.close();
      }
      return;
    }
    const collate = this.options.collate ?? (defaultCollate as unknown as (samples: T[]) => B);
    const { device } = this.options;
    const pass = this.#native.iterIndices(this.#skip);
    try {
      const owned = disposeBatches && (this.options.collate === undefined || device !== undefined);
      const next = () => pass.nextBatch();
      for (let indices = steps.next(next); indices !== null; indices = steps.next(next)) {
        const collated = collate(indices.map((i) => dataset.get(i)));
        const batch = device === undefined ? collated : toDevice(collated, device, this.options.collate === undefined);
        yield batch;
        if (owned) disposeTensors(batch);
      }
    } finally {
      steps.end();
      pass.close();
    }
  }
}

/**
 * One pass's step scopes: each step's scope opens before its batch is made and closes
 * when the loop asks for the next batch (or leaves), freeing what the step made.
 */
class StepScopes {
  readonly enabled: boolean;
  #scope: Scope | undefined;
  #step: number;

  constructor(enabled: boolean, skipped: number) {
    this.enabled = enabled;
    this.#step = skipped;
  }

  /** Ends the current step, then opens the next one's scope around `fetch` (the batch's making). */
  next<N>(fetch: () => N | null): N | null {
    this.end();
    if (!this.enabled) return fetch();
    this.#step += 1;
    this.#scope = openScope();
    const batch = fetch();
    if (batch === null) this.end();
    return batch;
  }

  end(): void {
    if (this.#scope === undefined) return;
    closeScope(this.#scope, { step: this.#step });
    this.#scope = undefined;
  }
}
