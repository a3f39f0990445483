// The Accelerator facade: one object a training loop talks to. It holds the
// process state, gradient-accumulation state and the prepared objects, and
// delegates numerics to the core (collectives, checkpoints, clipping).
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { loadSafetensors, loadStateFiles, saveSafetensors, saveStateFiles, saveWeights, type StateValue } from "./checkpoint.js";
import type { DdpReducer } from "../index.js";
import { native } from "./native.js";
import {
  broadcast, broadcastObject, gather, gatherObject, padAcrossProcesses, reduce, waitForEveryone, type PadOptions, type TensorTree,
} from "./collectives.js";
import { clipGradNorm } from "./optim/clip.js";
import { PrecisionPolicy, type GradScalerOptions, type PrecisionMode } from "./precision.js";
import { initProcessGroup, readProcessState, shareOf, type ProcessState } from "./state.js";
import { keep, manualSeed, Tensor } from "./tensor.js";
import { progress, type Progress, type ProgressOptions } from "./progress.js";
import { TrackerSet, type GeneralTracker, type LogValues, type LogWith, type TrackerConfig } from "./tracking/index.js";

export type MixedPrecision = PrecisionMode;

export interface AcceleratorOptions {
  /** "bf16" or "fp16" autocast in prepared models' forward (fp16 with dynamic loss scaling); default "no". */
  mixedPrecision?: MixedPrecision;
  /** fp16 loss scaling: initScale 65536, growthFactor 2, backoffFactor 0.5, growthInterval 2000. */
  gradScaler?: GradScalerOptions;
  gradientAccumulationSteps?: number;
  /** Use the CPU even when a GPU is present. */
  cpu?: boolean;
  /** Seeds every RNG at construction (same as `setSeed`). */
  seed?: number;
  /** Where `saveState()` without a directory writes, with `automaticCheckpointNaming`, and where trackers write. */
  projectDir?: string;
  /** Trackers that `initTrackers` starts and `log` writes to, on the main process: "jsonl", "tensorboard", "all" or your `GeneralTracker`s. */
  logWith?: LogWith;
  automaticCheckpointNaming?: boolean;
  /** With automatic naming, keep at most this many checkpoints (oldest deleted). */
  totalLimit?: number;
  /** Seconds that rendezvous and each collective may wait for the other processes. Default 1800. */
  timeout?: number;
  /** Gradients are averaged across processes in buckets of about this many bytes. Default 25 MB. */
  bucketBytes?: number;
  /** Complete the last round of batches by cycling from the start so every process gets as many (default true). */
  evenBatches?: boolean;
  /** Split each loader batch between processes instead of giving each process whole batches (default false). */
  splitBatches?: boolean;
  /**
   * Prepared loaders free what each step made when the loop asks for the next batch
   * (see `data.DataLoaderOptions.stepScope`; `keep()` exempts a tensor). Default true.
   */
  stepScope?: boolean;
}

/** What `prepare` recognises, by shape (any object with these methods works). */
export interface Stateful {
  stateDict(): StateValue | Record<string, unknown>;
  loadStateDict(state: never): void;
}
interface ModelLike extends Stateful {
  forward(...args: never[]): unknown;
  parameters(): Tensor[];
  to(device: string): unknown;
}
interface OptimizerLike extends Stateful {
  step(): void;
  zeroGrad(setToNone?: boolean): void;
  paramGroups?: readonly { readonly params: readonly Tensor[] }[];
}
interface SchedulerLike extends Stateful {
  step(): void;
  getLastLr(): number[];
}
interface LoaderLike extends Stateful, Iterable<unknown> {
  length: number;
  endOfDataloader?: boolean;
  remainder?: number;
  options?: { disposeBatches?: boolean; stepScope?: boolean };
  /** A copy delivering batches to `device`, sharded for this process (see data.DataLoader). */
  withOptions?(overrides: {
    device?: string;
    disposeBatches?: boolean;
    stepScope?: boolean;
    shard?: { numProcesses: number; processIndex: number; evenBatches?: boolean; splitBatches?: boolean };
  }): LoaderLike;
}

const has = (obj: unknown, ...methods: string[]): boolean =>
  obj !== null && typeof obj === "object" && methods.every((m) => typeof (obj as Record<string, unknown>)[m] === "function");
const isScheduler = (o: unknown): o is SchedulerLike => has(o, "step", "getLastLr", "stateDict");
const isOptimizer = (o: unknown): o is OptimizerLike => !isScheduler(o) && has(o, "step", "zeroGrad", "stateDict");
const isModel = (o: unknown): o is ModelLike => has(o, "forward", "parameters", "to", "stateDict");
const isLoader = (o: unknown): o is LoaderLike =>
  o !== null && typeof o === "object" && typeof (o as Record<symbol, unknown>)[Symbol.iterator] === "function" && has(o, "stateDict");

export class Accelerator {
  readonly state: ProcessState;
  readonly mixedPrecision: MixedPrecision;
  /** Autocast and fp16 loss scaling (see ts/precision.ts). */
  readonly precision: PrecisionPolicy;
  readonly gradientAccumulationSteps: number;
  /** False on micro-steps that only accumulate gradients (see `accumulate`). */
  syncGradients = true;
  /** Micro-steps counted by `accumulate`, saved and restored with the state. */
  step = 0;
  /** Checkpoints written by automatic naming. */
  saveIteration = 0;
  private readonly options: AcceleratorOptions;
  private readonly models: ModelLike[] = [];
  private readonly optimizers: OptimizerLike[] = [];
  private readonly schedulers: SchedulerLike[] = [];
  private readonly loaders: LoaderLike[] = [];
  private readonly customObjects: Stateful[] = [];
  private readonly reducers: DdpReducer[] = [];
  private activeLoader: LoaderLike | undefined;
  private readonly trackers: TrackerSet;
  /** Whether each optimizer's last step was skipped (fp16 overflow). */
  private readonly skipped = new Map<OptimizerLike, boolean>();

  constructor(options: AcceleratorOptions = {}) {
    const steps = options.gradientAccumulationSteps ?? Number(process.env.ACCELERATE_GRADIENT_ACCUMULATION_STEPS ?? 1);
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`Accelerator: gradientAccumulationSteps must be a positive integer, got ${steps}`);
    const precision = options.mixedPrecision ?? (process.env.ACCELERATE_MIXED_PRECISION as MixedPrecision | undefined) ?? "no";
    if (!["no", "fp16", "bf16"].includes(precision)) throw new Error(`Accelerator: mixedPrecision must be "no", "fp16" or "bf16", got "${precision}"`);
    this.options = options;
    this.state = readProcessState(options);
    initProcessGroup(this.state, (options.timeout ?? 1800) * 1000);
    this.mixedPrecision = precision;
    this.precision = new PrecisionPolicy(precision, this.state.device, options.gradScaler);
    this.gradientAccumulationSteps = steps;
    this.trackers = new TrackerSet(options.logWith, options.projectDir, this.state.processIndex === 0);
    if (options.seed !== undefined) this.setSeed(options.seed);
  }

  get device(): string {
    return this.state.device;
  }
  get numProcesses(): number {
    return this.state.numProcesses;
  }
  get processIndex(): number {
    return this.state.processIndex;
  }
  get localProcessIndex(): number {
    return this.state.localProcessIndex;
  }
  get isMainProcess(): boolean {
    return this.state.processIndex === 0;
  }
  get isLocalMainProcess(): boolean {
    return this.state.localProcessIndex === 0;
  }
  get isLastProcess(): boolean {
    return this.state.processIndex === this.state.numProcesses - 1;
  }

  /**
   * Makes models, optimizers, schedulers and data loaders ready for this run and
   * returns them in order: models, optimizers and schedulers adapted in place, data
   * loaders as copies that deliver this process's shard on `device`. Anything else is returned unchanged.
   */
  prepare<T extends unknown[]>(...objects: T): T {
    const prepared = objects.map((obj) => {
      if (isModel(obj)) this.prepareModel(obj);
      else if (isOptimizer(obj)) this.prepareOptimizer(obj);
      else if (isLoader(obj)) return this.prepareLoader(obj);
      return obj;
    });
    for (const obj of prepared) if (isScheduler(obj)) this.prepareScheduler(obj);
    return prepared as T;
  }

  /** Moves the model to the device and, with several processes, gives every process process 0's parameters. */
  private prepareModel(model: ModelLike): void {
    if (this.models.includes(model)) return;
    model.to(this.device);
    if (this.numProcesses > 1) {
      native.distBroadcastParameters(model.parameters());
      this.reducers.push(new native.DdpReducer(model.parameters(), this.options.bucketBytes ?? 25 * 2 ** 20));
    }
    this.precision.wrapModel(model);
    this.models.push(model);
  }

  /**
   * step() and zeroGrad() do nothing on micro-steps that only accumulate gradients;
   * with fp16, step() unscales and is skipped when a gradient is inf or NaN.
   */
  private prepareOptimizer(optimizer: OptimizerLike): void {
    if (this.optimizers.includes(optimizer)) return;
    const step = optimizer.step.bind(optimizer);
    const zeroGrad = optimizer.zeroGrad.bind(optimizer);
    optimizer.step = () => {
      if (!this.syncGradients) return;
      this.skipped.set(optimizer, !this.precision.step(this.optimizerParams(optimizer), step));
    };
    optimizer.zeroGrad = (setToNone?: boolean) => {
      if (this.syncGradients) zeroGrad(setToNone);
    };
    this.optimizers.push(optimizer);
  }

  /**
   * The schedule advances only with real optimizer steps (none when any optimizer skipped),
   * once per process unless batches are split, since its length counts the unsharded loader's batches (HF semantics).
   */
  private prepareScheduler(scheduler: SchedulerLike): void {
    if (this.schedulers.includes(scheduler)) return;
    const step = scheduler.step.bind(scheduler);
    scheduler.step = () => {
      if (!this.syncGradients || this.optimizerStepWasSkipped) return;
      const times = this.options.splitBatches ? 1 : this.numProcesses;
      for (let i = 0; i < times; i++) step();
    };
    this.schedulers.push(scheduler);
  }

  /** Iterating a prepared loader makes it the active one, which `accumulate` and `gatherForMetrics` consult. */
  private prepareLoader(original: LoaderLike): LoaderLike {
    if (this.loaders.includes(original)) return original;
    const shard = {
      numProcesses: this.numProcesses,
      processIndex: this.processIndex,
      evenBatches: this.options.evenBatches ?? true,
      splitBatches: this.options.splitBatches ?? false,
    };
    const disposeBatches = original.options?.disposeBatches ?? true;
    const stepScope = original.options?.stepScope ?? this.options.stepScope ?? true;
    const loader = original.withOptions?.({ device: this.device, shard, disposeBatches, stepScope }) ?? original;
    return this.prepareLoaderIteration(loader);
  }

  /** Iterating `loader` makes it the active one, which `accumulate` and `gatherForMetrics` consult. */
  private prepareLoaderIteration(loader: LoaderLike): LoaderLike {
    const iterate = loader[Symbol.iterator].bind(loader);
    const self = this;
    loader[Symbol.iterator] = function* () {
      const outer = self.activeLoader;
      self.activeLoader = loader;
      try {
        yield* { [Symbol.iterator]: iterate };
      } finally {
        self.activeLoader = outer;
      }
    };
    this.loaders.push(loader);
    return loader;
  }

  /**
   * Backpropagates `loss`, divided for gradient accumulation and scaled for fp16, and on
   * steps that sync averages the prepared models' gradients across processes. Use instead of `loss.backward()`.
   */
  backward(loss: Tensor): void {
    const divided = this.gradientAccumulationSteps === 1 ? loss : loss.div(this.gradientAccumulationSteps);
    const scaled = this.precision.scaleLoss(divided);
    for (const reducer of this.reducers) reducer.prepare(this.syncGradients);
    try {
      scaled.backward();
    } finally {
      if (scaled !== loss) scaled.dispose();
      if (divided !== loss) divided.dispose();
    }
    for (const reducer of this.reducers) reducer.finish();
  }

  /** Runs one micro-step: gradients sync (and optimizers step) every `gradientAccumulationSteps` calls and at the end of the loader. */
  accumulate<R>(_model: unknown, fn: () => R): R {
    if (this.activeLoader?.endOfDataloader) {
      this.step = 0;
      this.syncGradients = true;
    } else {
      this.step += 1;
      this.syncGradients = this.step % this.gradientAccumulationSteps === 0;
    }
    return fn();
  }

  /** Clips the gradients' total norm to `maxNorm` (unscaling fp16 gradients first); returns the norm before clipping. */
  clipGradNorm(parameters: Iterable<Tensor> | Tensor, maxNorm: number, normType = 2): number {
    const list = parameters instanceof Tensor ? [parameters] : [...parameters];
    this.unscaleGradients(list);
    return clipGradNorm(list, maxNorm, normType);
  }

  /** fp16: divides the gradients by the loss scale now (once per step); other modes: nothing. */
  unscaleGradients(parameters?: Tensor[]): void {
    this.precision.unscale(parameters ?? this.optimizers.flatMap((o) => this.optimizerParams(o)));
  }

  /** True when the last step of any prepared optimizer was skipped because fp16 gradients overflowed. */
  get optimizerStepWasSkipped(): boolean {
    return [...this.skipped.values()].some(Boolean);
  }

  /** Exempts tensors from prepared loaders' step scopes and from `tidy` (see `keep`); returns its argument. */
  keep<T extends Tensor | readonly Tensor[]>(tensors: T): T {
    return keep(tensors);
  }

  /** Runs `fn` under the same autocast as prepared models' forward. */
  autocast<R>(fn: () => R): R {
    return this.precision.autocast(fn);
  }

  private optimizerParams(optimizer: OptimizerLike): Tensor[] {
    if (optimizer.paramGroups) return optimizer.paramGroups.flatMap((g) => [...g.params]);
    return this.models.flatMap((m) => m.parameters());
  }

  /** Concatenates tensors (or nested arrays/records of them) from every process along dim 0. */
  gather<T extends TensorTree>(tree: T): T {
    return gather(tree);
  }

  /**
   * `gather`, without the samples that even batching repeated at the end of the
   * active loader, so that metrics count every sample exactly once.
   */
  gatherForMetrics<T extends TensorTree>(tree: T): T {
    const gathered = gather(tree);
    const remainder = this.activeLoader?.endOfDataloader ? (this.activeLoader.remainder ?? 0) : 0;
    if (remainder <= 0) return gathered;
    const truncate = (node: TensorTree): TensorTree => {
      if (node instanceof Tensor) return node.shape[0] > remainder ? node.slice(0, 0, remainder) : node;
      if (Array.isArray(node)) return node.map(truncate);
      return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, truncate(v)]));
    };
    return truncate(gathered) as T;
  }

  /** Reduces across processes ("sum", "mean", "max" or "min"); a new tensor on every process. */
  reduce<T extends TensorTree>(tree: T, reduction: "sum" | "mean" | "max" | "min" = "sum"): T {
    return reduce(tree, reduction);
  }

  /** Pads `dim` to the largest size across processes with `padIndex` (at the front with `padFirst`). */
  padAcrossProcesses<T extends TensorTree>(tree: T, options: PadOptions = {}): T {
    return padAcrossProcesses(tree, options);
  }

  /** Every process's JSON value in rank order; arrays are concatenated (HF's `gather_object` flattens one level). */
  gatherObject<V>(value: readonly V[]): V[];
  gatherObject<V>(value: V): V[];
  gatherObject<V>(value: V | readonly V[]): V[] {
    return gatherObject<V>(value as V);
  }

  /** Process `from`'s JSON value on every process. */
  broadcastObject<V>(value: V, from = 0): V {
    return broadcastObject(value, from);
  }

  /** Overwrites `tensor` with process `from`'s values. */
  broadcast(tensor: Tensor, from = 0): Tensor {
    return broadcast(tensor, from);
  }

  /** Waits until every process reaches this point. */
  waitForEveryone(): void {
    waitForEveryone();
  }

  /** GPU memory of this process's device in bytes: held by tensors, reserved, and the peak held (zeros on the CPU). */
  memory(): { allocated: number; reserved: number; peak: number } {
    if (!this.device.startsWith("cuda")) return { allocated: 0, reserved: 0, peak: 0 };
    return native.cudaMemoryStats(this.cudaIndex());
  }

  /** Forgets the prepared objects and returns cached GPU memory to the driver. */
  freeMemory(): void {
    for (const list of [this.models, this.optimizers, this.schedulers, this.loaders, this.reducers]) list.length = 0;
    this.activeLoader = undefined;
    this.step = 0;
    if (this.device.startsWith("cuda")) native.cudaEmptyCache();
  }

  /** Starts counting the peak of `memory()` afresh. */
  resetPeakMemory(): void {
    if (this.device.startsWith("cuda")) native.cudaResetPeakMemory(this.cudaIndex());
  }

  /** Waits until this process's GPU finished the work queued so far (for timing). */
  synchronize(): void {
    if (this.device.startsWith("cuda")) native.cudaSynchronize(this.cudaIndex());
  }

  private cudaIndex(): number {
    return Number(this.device.split(":")[1] ?? 0);
  }

  /** Starts the `logWith` trackers for run `projectName` (a folder under `projectDir`) and records `config` (main process only). */
  initTrackers(projectName: string, config?: TrackerConfig): void {
    this.trackers.init(projectName, config);
  }

  /** Logs `values` to every started tracker at `step` (default: the number of earlier `log` calls); main process only. */
  log(values: LogValues, options: { step?: number } = {}): void {
    this.trackers.log(values, options.step);
  }

  /** The started tracker named `name` (undefined off the main process). */
  getTracker(name: string): GeneralTracker | undefined {
    return this.trackers.get(name);
  }

  /** A progress bar over `iterable` drawn on the main process only (see `progress`). */
  progress<T>(iterable: Iterable<T>, options: ProgressOptions = {}): Progress<T> {
    return progress(iterable, { enabled: this.isMainProcess, ...options });
  }

  /** Ends the run: finishes the trackers and leaves the process group after all processes arrive. */
  endTraining(): void {
    this.trackers.finish();
    this.reducers.length = 0;
    if (native.distIsInitialized()) native.distDestroy();
  }

  /** Prints once per machine (on the local main process). */
  print(...args: unknown[]): void {
    if (this.isLocalMainProcess) console.log(...args);
  }

  /** Runs `fn` on the main process first, then on the others. */
  async mainProcessFirst<R>(fn: () => R | Promise<R>): Promise<R> {
    if (!this.isMainProcess) this.waitForEveryone();
    const result = await fn();
    if (this.isMainProcess) this.waitForEveryone();
    return result;
  }

  /** `fn` wrapped to run only on the main process (elsewhere it returns undefined). */
  onMainProcess<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R | undefined {
    return (...args: A) => (this.isMainProcess ? fn(...args) : undefined);
  }

  /** This process's contiguous share of `inputs`; with `applyPadding` every share has the same length. */
  splitBetweenProcesses<T>(inputs: T[], options: { applyPadding?: boolean } = {}): T[] {
    const { start, end } = shareOf(inputs.length, this.numProcesses, this.processIndex);
    const share = inputs.slice(start, end);
    if (options.applyPadding && inputs.length > 0) {
      const longest = Math.ceil(inputs.length / this.numProcesses);
      while (share.length < longest) share.push(share.length > 0 ? share[share.length - 1] : inputs[inputs.length - 1]);
    }
    return share;
  }

  /**
   * A loader that skips the first `numBatches` batches of this process's shard (to resume
   * mid-epoch); use the original loader again from the next epoch on.
   */
  skipFirstBatches<L extends { skipFirstBatches(n: number): L }>(loader: L, numBatches: number): L {
    const skipping = loader.skipFirstBatches(numBatches);
    if (isLoader(skipping)) return this.prepareLoaderIteration(skipping as unknown as LoaderLike) as unknown as L;
    return skipping;
  }

  unwrapModel<M>(model: M): M {
    return model;
  }

  /** Seeds libtorch's generators (CPU and CUDA). */
  setSeed(seed: number): void {
    manualSeed(seed);
  }

  /** Saves a model's weights as `model.safetensors`, or shards with an index above `maxShardSize`. */
  saveModel(model: { stateDict(): Record<string, Tensor> }, dir: string, options: { maxShardSize?: number | string } = {}): string[] {
    if (!this.isMainProcess) return [];
    return saveWeights(model.stateDict(), dir, options.maxShardSize ?? "10GB");
  }

  /** Adds objects with stateDict()/loadStateDict() to what saveState/loadState carry. */
  registerForCheckpointing(...objects: unknown[]): void {
    const bad = objects.flatMap((o, i) => (has(o, "stateDict", "loadStateDict") ? [] : [i]));
    if (bad.length > 0) throw new Error(`registerForCheckpointing: objects at positions ${bad.join(", ")} lack stateDict() and loadStateDict()`);
    this.customObjects.push(...(objects as Stateful[]));
  }

  private checkpointDir(dir: string | undefined, op: string): string {
    if (dir !== undefined) return dir;
    if (this.options.automaticCheckpointNaming && this.options.projectDir) {
      const next = join(this.options.projectDir, "checkpoints", `checkpoint_${this.saveIteration}`);
      if (existsSync(next)) throw new Error(`${op}: ${next} already exists; automatic naming never overwrites a checkpoint`);
      return next;
    }
    throw new Error(`${op}: give a directory, or construct the Accelerator with projectDir and automaticCheckpointNaming`);
  }

  private latestCheckpoint(op: string): string {
    const root = join(this.options.projectDir ?? "", "checkpoints");
    const found = existsSync(root)
      ? readdirSync(root).map((n) => /^checkpoint_(\d+)$/.exec(n)).filter((m): m is RegExpExecArray => m !== null)
      : [];
    if (found.length === 0) throw new Error(`${op}: no checkpoint_N directory in ${root}`);
    found.sort((a, b) => Number(a[1]) - Number(b[1]));
    return join(root, found[found.length - 1][0]);
  }

  /**
   * Saves models, optimizers, schedulers, data loader positions, registered objects
   * and RNG states into `dir`, atomically (a crash leaves the previous checkpoint intact).
   */
  saveState(dir?: string): string {
    const target = this.checkpointDir(dir, "saveState");
    // The main process writes the shared state into a staging directory; every process
    // adds its own RNG state there; the main process then swaps it in for the old one.
    let staging = this.isMainProcess ? native.stagingDir(target) : "";
    staging = broadcastObject(staging);
    try {
      if (this.isMainProcess) this.writeSharedState(staging);
      const rng: Record<string, Tensor> = { cpu: native.cpuRngState() };
      if (this.device.startsWith("cuda")) rng.cuda = native.cudaRngState(this.cudaIndex());
      saveSafetensors(join(staging, `random_states_${this.processIndex}.safetensors`), rng);
    } catch (error) {
      if (this.isMainProcess) rmSync(staging, { recursive: true, force: true });
      throw error;
    }
    waitForEveryone();
    if (this.isMainProcess) native.commitStagingDir(staging, target);
    waitForEveryone();
    this.saveIteration += 1;
    if (this.isMainProcess) this.pruneCheckpoints();
    return target;
  }

  private writeSharedState(staging: string): void {
    const suffix = (i: number) => (i === 0 ? "" : `_${i}`);
    this.models.forEach((m, i) => saveSafetensors(join(staging, `model${suffix(i)}.safetensors`), m.stateDict() as Record<string, Tensor>));
    this.optimizers.forEach((o, i) => saveStateFiles(join(staging, `optimizer${suffix(i)}`), o.stateDict() as StateValue));
    this.schedulers.forEach((s, i) => saveStateFiles(join(staging, `scheduler${suffix(i)}`), s.stateDict() as StateValue));
    this.loaders.forEach((l, i) => saveStateFiles(join(staging, `dl_state_dict${suffix(i)}`), l.stateDict() as StateValue));
    this.customObjects.forEach((c, i) => saveStateFiles(join(staging, `custom_checkpoint_${i}`), c.stateDict() as StateValue));
    const scaler = this.precision.stateDict();
    if (scaler) native.writeFileAtomic(join(staging, "scaler.json"), `${JSON.stringify(scaler)}\n`);
    native.writeFileAtomic(
      join(staging, "accelerator_state.json"),
      `${JSON.stringify({ step: this.step, saveIteration: this.saveIteration + 1, customObjects: this.customObjects.length })}\n`,
    );
  }

  private pruneCheckpoints(): void {
    const limit = this.options.totalLimit;
    if (!this.options.automaticCheckpointNaming || !this.options.projectDir || limit === undefined) return;
    const root = join(this.options.projectDir, "checkpoints");
    const all = readdirSync(root).filter((n) => /^checkpoint_\d+$/.test(n)).sort((a, b) => Number(a.slice(11)) - Number(b.slice(11)));
    for (const old of all.slice(0, Math.max(0, all.length - limit))) rmSync(join(root, old), { recursive: true, force: true });
  }

  /** Restores everything `saveState` saved (latest automatic checkpoint when `dir` is omitted). */
  loadState(dir?: string): void {
    const source = dir ?? this.latestCheckpoint("loadState");
    if (!existsSync(source)) throw new Error(`loadState: ${source} does not exist`);
    const suffix = (i: number) => (i === 0 ? "" : `_${i}`);
    const metaFile = join(source, "accelerator_state.json");
    if (!existsSync(metaFile)) throw new Error(`loadState: ${source} is not a checkpoint written by saveState (no accelerator_state.json)`);
    const meta = JSON.parse(readFileSync(metaFile, "utf8")) as { step: number; saveIteration: number; customObjects: number };
    if (meta.customObjects !== this.customObjects.length) {
      throw new Error(`loadState: the checkpoint holds ${meta.customObjects} registered objects, but ${this.customObjects.length} are registered now`);
    }
    const loadInto = (obj: Stateful, base: string) => obj.loadStateDict(loadStateFiles(base) as never);
    this.models.forEach((m, i) => m.loadStateDict(loadSafetensors(join(source, `model${suffix(i)}.safetensors`)) as never));
    this.optimizers.forEach((o, i) => loadInto(o, join(source, `optimizer${suffix(i)}`)));
    this.schedulers.forEach((s, i) => loadInto(s, join(source, `scheduler${suffix(i)}`)));
    this.loaders.forEach((l, i) => loadInto(l, join(source, `dl_state_dict${suffix(i)}`)));
    this.customObjects.forEach((c, i) => loadInto(c, join(source, `custom_checkpoint_${i}`)));
    const scalerFile = join(source, "scaler.json");
    if (existsSync(scalerFile)) this.precision.loadStateDict(JSON.parse(readFileSync(scalerFile, "utf8")));
    const rngFile = join(source, `random_states_${this.processIndex}.safetensors`);
    if (existsSync(rngFile)) {
      const rng = loadSafetensors(rngFile);
      native.setCpuRngState(rng.cpu);
      if (rng.cuda && this.device.startsWith("cuda")) native.setCudaRngState(this.cudaIndex(), rng.cuda);
    }
    this.step = meta.step;
    this.saveIteration = meta.saveIteration;
  }
}
