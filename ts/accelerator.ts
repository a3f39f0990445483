// The Accelerator facade: the one object a training loop talks to. It composes the
// process state, the precision policy, a strategy (ts/strategy/), the gradient-accumulation
// state, the prepared objects and a checkpointer, and dispatches to them.
import { ActivationCheckpoints, type CheckpointSelector } from "./activation-checkpointing.js";
import { compileStep, type CompileContext, type CompileStepOptions } from "./compile-step.js";
import { checkOptionNames, checkPath, describe, optionNames } from "./errors.js";
import { saveWeights } from "./checkpoint.js";
import { Checkpointer } from "./checkpointing.js";
import {
  broadcast, broadcastObject, gather, gatherObject, padAcrossProcesses, reduce, waitForEveryone, type PadOptions, type TensorTree,
} from "./collectives.js";
import { GradientState } from "./gradient-state.js";
import { mixedPrecisionOf } from "./mixed-precision.js";
import { native } from "./native.js";
import { PrecisionPolicy, type GradScalerOptions, type PrecisionMode } from "./precision.js";
import {
  PreparedObjects, hasMethods, isLoader, isModel, isOptimizer, isScheduler, wrapWith,
  type LoaderLike, type ModelLike, type OptimizerLike, type SchedulerLike, type Stateful,
} from "./prepared.js";
import { initProcessGroup, readProcessState, shareOf, type ProcessState } from "./state.js";
import { fillBatchSizes } from "./strategy/deepspeed-config.js";
import { createStrategy, strategyConfigOf, type DeepSpeedPlugin, type FsdpPlugin, type Strategy, type StrategyConfig } from "./strategy/index.js";
import { keep, manualSeed, Tensor } from "./tensor.js";
import { Module } from "./nn/module.js";
import { profile, type Profile, type ProfileOptions } from "./profiling.js";
import { progress, type Progress, type ProgressOptions } from "./progress.js";
import { TrackerSet, type GeneralTracker, type LogValues, type LogWith, type TrackerConfig } from "./tracking/index.js";

export type MixedPrecision = PrecisionMode;
export type { Stateful } from "./prepared.js";

export interface AcceleratorOptions {
  /** "bf16" or "fp16" autocast in prepared models' forward (fp16 with dynamic loss scaling), or "fp8": bf16 autocast with Linear layers in fp8 (docs/mixed-precision.md); default "no". */
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
  /** ZeRO through DeepSpeed's settings: `{ zeroStage: 0-3, offloadOptimizerDevice, offloadParamDevice }` or a DeepSpeed config (`hfDsConfig`, `configFile`); see docs/zero.md. */
  deepspeedPlugin?: DeepSpeedPlugin;
  /** ZeRO through FSDP's settings: `{}` (full shard) is stage 3, `{ reshardAfterForward: false }` stage 2; `cpuOffload` offloads. */
  fsdpPlugin?: FsdpPlugin;
}

const ACCELERATOR_OPTIONS = optionNames<AcceleratorOptions>()([
  "mixedPrecision", "gradScaler", "gradientAccumulationSteps", "cpu", "seed", "projectDir", "logWith", "automaticCheckpointNaming",
  "totalLimit", "timeout", "bucketBytes", "evenBatches", "splitBatches", "stepScope", "deepspeedPlugin", "fsdpPlugin",
]);

/** Bytes of training state this process holds (see `stateBytes`): totals, and where they live. */
export interface StateBytes {
  parameters: number;
  gradients: number;
  optimizerState: number;
  /** The same, on the device (a GPU; zeros on a CPU run). */
  device: { parameters: number; gradients: number; optimizerState: number };
  /** The same, in host memory (everything on a CPU run; offloaded state on a GPU run). */
  host: { parameters: number; gradients: number; optimizerState: number };
}

export class Accelerator {
  readonly state: ProcessState;
  readonly mixedPrecision: MixedPrecision;
  /** Autocast and fp16 loss scaling (see ts/precision.ts). */
  readonly precision: PrecisionPolicy;
  /** How models and gradients are spread over the processes (see ts/strategy/). */
  readonly strategy: Strategy;
  readonly gradientState: GradientState;
  /**
   * The ZeRO stage and what a DeepSpeed config asked for (gradient clipping inside the
   * optimizer's step, batch sizes with "auto" filled when a loader is prepared, keys not used).
   */
  readonly strategyConfig: StrategyConfig;
  readonly #options: AcceleratorOptions;
  readonly #prepared = new PreparedObjects();
  readonly #checkpointer: Checkpointer;
  /** The modules whose activations are recomputed in backward (enableActivationCheckpointing). */
  readonly #checkpoints: ActivationCheckpoints;
  /** Whether the DeepSpeed config's "auto" batch sizes were filled from the first prepared loaders. */
  #batchSizesFilled = false;
  /** Whether each prepared optimizer's last step was skipped (fp16 overflow). */
  readonly #skipped = new Map<OptimizerLike, boolean>();
  readonly #trackers: TrackerSet;

  constructor(options: AcceleratorOptions = {}) {
    checkOptionNames("Accelerator", options, ACCELERATOR_OPTIONS);
    const config = strategyConfigOf(options);
    const fromConfig = <T>(option: T | undefined, configured: T | undefined, optionName: string, key: string): T | undefined => {
      if (option !== undefined && configured !== undefined && option !== configured) {
        throw new Error(`Accelerator: ${optionName} is ${JSON.stringify(option)} but the DeepSpeed config's ${key} is ${JSON.stringify(configured)}; give it once`);
      }
      return option ?? configured;
    };
    const steps =
      fromConfig(options.gradientAccumulationSteps, config.gradientAccumulationSteps, "gradientAccumulationSteps", "gradient_accumulation_steps") ??
      Number(process.env.ACCELERATE_GRADIENT_ACCUMULATION_STEPS ?? 1);
    // "fp8" is bf16 with fp8 Linear layers, so a DeepSpeed config's bf16 agrees with it (as in HF).
    const fromEnv = process.env.ACCELERATE_MIXED_PRECISION;
    const dsPrecision = (options.mixedPrecision ?? fromEnv) === "fp8" && config.mixedPrecision === "bf16" ? undefined : config.mixedPrecision;
    const configured = fromConfig(options.mixedPrecision, dsPrecision, "mixedPrecision", "bf16/fp16 enabled");
    const where = configured === undefined && fromEnv !== undefined ? "Accelerator (ACCELERATE_MIXED_PRECISION)" : "Accelerator";
    const precision = mixedPrecisionOf(where, configured ?? fromEnv ?? "no");
    this.gradientState = new GradientState(steps);
    this.#options = options;
    this.state = readProcessState(options);
    initProcessGroup(this.state, (options.timeout ?? 1800) * 1000);
    this.mixedPrecision = precision;
    this.precision = new PrecisionPolicy(precision, this.state.device, { ...config.gradScaler, ...options.gradScaler });
    this.strategy = createStrategy(this.state, { ...options, mixedPrecision: precision }, config);
    this.strategyConfig = config;
    if (config.notUsed.length > 0 && this.state.processIndex === 0) {
      console.warn(`Accelerator: DeepSpeed config keys not used by accelerate-ts: ${config.notUsed.join(", ")}`);
    }
    const parts = { state: this.state, prepared: this.#prepared, precision: this.precision, gradientState: this.gradientState, strategy: this.strategy };
    this.#checkpointer = new Checkpointer(parts, options);
    this.#checkpoints = new ActivationCheckpoints(this.device, (fn) => this.precision.autocast(fn));
    this.#trackers = new TrackerSet(options.logWith, options.projectDir, this.state.processIndex === 0);
    if (options.seed !== undefined) this.setSeed(options.seed);
  }

  get gradientAccumulationSteps(): number {
    return this.gradientState.accumulationSteps;
  }
  /** False on micro-steps that only accumulate gradients (see `accumulate`). */
  get syncGradients(): boolean {
    return this.gradientState.syncGradients;
  }
  set syncGradients(value: boolean) {
    this.gradientState.syncGradients = value;
  }
  /** Micro-steps counted by `accumulate`, saved and restored with the state. */
  get step(): number {
    return this.gradientState.step;
  }
  set step(value: number) {
    this.gradientState.step = value;
  }
  /** Checkpoints written by automatic naming. */
  get saveIteration(): number {
    return this.#checkpointer.saveIteration;
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
   * Makes models, optimizers, schedulers and data loaders ready for this run and returns
   * them in order: models adapted in place, optimizers and schedulers wrapped (their
   * `step`/`zeroGrad` follow accumulation and fp16 skipping; everything else is the
   * original object's), data loaders as copies that deliver this process's shard on
   * `device`. Anything else is returned unchanged.
   */
  prepare<T extends unknown[]>(...objects: T): T {
    this.#fillBatchSizes(objects.filter(isLoader));
    // Models first: a strategy that shards parameters (ZeRO stage 3) sets up the optimizers over them.
    const models = new Map(objects.filter(isModel).map((m) => [m, this.#prepareModel(m)]));
    const prepared = objects.map((obj) => {
      if (isModel(obj)) return models.get(obj);
      if (isOptimizer(obj)) return this.#prepareOptimizer(obj);
      if (isLoader(obj)) return this.#prepareLoader(obj);
      return obj;
    });
    return prepared.map((obj) => (isScheduler(obj) ? this.#prepareScheduler(obj) : obj)) as T;
  }

  /**
   * Under DeepSpeed, the first `prepare` with loaders fills the config's "auto" batch sizes from
   * them (HF); loaders prepared later, such as an evaluation loader, may have any batch size.
   */
  #fillBatchSizes(loaders: LoaderLike[]): void {
    const config = this.strategyConfig;
    if (this.#batchSizesFilled || (config.zeroStage === 0 && config.trainBatchSize === undefined && config.trainMicroBatchSizePerGpu === undefined)) return;
    // A DataLoader without batchSize batches 1 sample; split batches are shared between the processes (HF).
    const split = this.#options.splitBatches ? this.numProcesses : 1;
    const sizes = loaders
      .filter((l) => !this.#prepared.loaders.includes(l) && l.options !== undefined)
      .map((l) => Math.max(1, Math.floor((l.options?.batchSize ?? 1) / split)));
    if (sizes.length === 0) return;
    Object.assign(config, fillBatchSizes(config, { loaderBatchSizes: sizes, gradientAccumulationSteps: this.gradientAccumulationSteps, numProcesses: this.numProcesses }));
    this.#batchSizesFilled = true;
  }

  /** Moves the model to the device; the strategy then sets it up across processes. */
  #prepareModel(model: ModelLike): ModelLike {
    if (this.#prepared.models.includes(model)) return model;
    model.to(this.device);
    this.strategy.setupModel(model);
    this.precision.wrapModel(model);
    this.#prepared.models.push(model);
    return model;
  }

  /**
   * The optimizer, wrapped: step() and zeroGrad() do nothing on micro-steps that only
   * accumulate gradients; with fp16, step() unscales and is skipped when a gradient is inf or NaN.
   */
  #prepareOptimizer(optimizer: OptimizerLike): OptimizerLike {
    const known = [...this.#prepared.unwrapped].find(([, original]) => original === optimizer);
    if (known) return known[0];
    const hooks = this.strategy.setupOptimizer(optimizer);
    const step = hooks ? () => hooks.step() : () => optimizer.step();
    const wrapped: OptimizerLike = wrapWith(optimizer, {
      step: () => {
        if (!this.syncGradients) return;
        const params = this.#optimizerParams(optimizer);
        this.#checkpoints.checkAllCarried();
        this.strategy.beforeStep(params);
        // A DeepSpeed config's gradient_clipping clips inside the step, as DeepSpeed's engine does.
        if (this.strategyConfig.gradientClipping !== undefined) this.clipGradNorm(params, this.strategyConfig.gradientClipping);
        // fp16: the gradients are unscaled (and checked for inf/NaN) where the strategy holds them.
        this.unscaleGradients(params);
        this.#skipped.set(wrapped, !this.precision.step(params, step));
      },
      zeroGrad: (setToNone?: boolean) => {
        if (!this.syncGradients) return;
        optimizer.zeroGrad(setToNone);
        hooks?.zeroGrad?.();
      },
      ...(hooks && { stateDict: () => hooks.stateDict(), loadStateDict: (state: unknown) => hooks.loadStateDict(state) }),
    });
    this.#prepared.optimizers.push(wrapped);
    this.#prepared.unwrapped.set(wrapped, optimizer);
    return wrapped;
  }

  /**
   * The scheduler, wrapped: it advances only with real optimizer steps (none when any optimizer
   * skipped), once per process unless batches are split, since its length counts the unsharded
   * loader's batches (HF semantics).
   */
  #prepareScheduler(scheduler: SchedulerLike): SchedulerLike {
    if (this.#prepared.schedulers.includes(scheduler)) return scheduler;
    const wrapped = wrapWith(scheduler, {
      step: () => {
        if (!this.syncGradients || this.optimizerStepWasSkipped) return;
        const times = this.#options.splitBatches ? 1 : this.numProcesses;
        for (let i = 0; i < times; i++) scheduler.step();
      },
    });
    this.#prepared.schedulers.push(wrapped);
    return wrapped;
  }

  /** A copy of the loader that delivers this process's shard on the device, with step scopes. */
  #prepareLoader(original: LoaderLike): LoaderLike {
    if (this.#prepared.loaders.includes(original)) return original;
    const shard = {
      numProcesses: this.numProcesses,
      processIndex: this.processIndex,
      evenBatches: this.#options.evenBatches ?? true,
      splitBatches: this.#options.splitBatches ?? false,
    };
    const disposeBatches = original.options?.disposeBatches ?? true;
    const stepScope = original.options?.stepScope ?? this.#options.stepScope ?? true;
    const loader = original.withOptions?.({ device: this.device, shard, disposeBatches, stepScope }) ?? original;
    return this.#iterateAsActive(loader);
  }

  /** Iterating `loader` makes it the active one, which `accumulate` and `gatherForMetrics` consult. */
  #iterateAsActive(loader: LoaderLike): LoaderLike {
    const iterate = loader[Symbol.iterator].bind(loader);
    const gradientState = this.gradientState;
    loader[Symbol.iterator] = () => gradientState.iterateAsActive(loader, iterate);
    this.#prepared.loaders.push(loader);
    return loader;
  }

  /**
   * Backpropagates `loss`, divided for gradient accumulation and scaled for fp16; on steps
   * that sync, the strategy makes the gradients final (averaged across processes). Use
   * instead of `loss.backward()`.
   */
  backward(loss: Tensor): void {
    if (!(loss instanceof Tensor)) throw new Error(`backward: loss must be a Tensor, got ${describe(loss)}`);
    const divided = this.gradientAccumulationSteps === 1 ? loss : loss.div(this.gradientAccumulationSteps);
    const scaled = this.precision.scaleLoss(divided);
    this.strategy.beforeBackward(this.syncGradients, this.#checkpoints.pending);
    try {
      scaled.backward();
      this.#checkpoints.backward();
    } finally {
      if (scaled !== loss) scaled.dispose();
      if (divided !== loss) divided.dispose();
    }
    this.strategy.afterBackward();
  }

  /**
   * A training step captured as a CUDA graph (opt-in): `fn` (forward, `accelerator.backward`,
   * `optimizer.step()`, `optimizer.zeroGrad()`) runs as it is for `warmup` calls, then its GPU
   * work is recorded once and replayed on every later call, with the call's input tensors
   * copied into the recorded ones. Tensors it returns are copies. Rules (docs/performance.md):
   * inputs keep their shapes (others run uncaptured, with a message); host code in `fn` runs
   * once, at capture, so reading values (`item()`), logging and schedulers stay outside it;
   * learning rates may change between calls, and other changes to what the recording holds
   * fixed record it again. On the CPU, with several processes, fp16, gradient accumulation,
   * ZeRO or another library's optimizer, `fn` runs uncaptured.
   */
  compileStep<A extends unknown[], R>(fn: (...args: A) => R, options?: CompileStepOptions): (...args: A) => R {
    const context: CompileContext = {
      device: this.device,
      uncapturable: () => {
        if (this.numProcesses > 1) return "several processes (captured collectives are not supported yet)";
        if (this.mixedPrecision === "fp16") return "fp16 loss scaling reads the GPU every step";
        if (this.gradientAccumulationSteps > 1) return "gradient accumulation makes calls differ";
        if (this.strategy.name !== "single") return `the ${this.strategy.name} strategy`;
        return null;
      },
      models: () => this.#prepared.models,
      optimizers: () => this.#prepared.optimizers,
      schedulers: () => this.#prepared.schedulers,
      warn: (message) => {
        if (this.isMainProcess) console.warn(message);
      },
    };
    return compileStep(fn, context, options);
  }

  /**
   * Runs `fn` under libtorch's profiler (HF's `accelerator.profile`, torch.profiler): returns
   * its result with the time of every operator (host) and GPU kernel (device), largest first,
   * `table()` to print them, and with `outputTraceDir` a Chrome trace `profile_<processIndex>.json`.
   * An async `fn` is profiled until its Promise settles. See docs/performance.md.
   */
  profile<R>(fn: () => Promise<R>, options?: ProfileOptions): Promise<Profile<R>>;
  profile<R>(fn: () => R, options?: ProfileOptions): Profile<R>;
  profile<R>(fn: () => R, options: ProfileOptions = {}): Profile<R> | Promise<Profile<Awaited<R>>> {
    return profile(fn, options, { processIndex: this.processIndex, onGpu: this.device.startsWith("cuda"), synchronize: () => this.synchronize() });
  }

  /**
   * Activation checkpointing (HF's `gradient_checkpointing`): the modules of `model` that
   * `select` picks (a class, such as a transformer block, or a predicate) keep no activations
   * from forward to backward; `backward` recomputes them. Costs one more forward of those
   * modules per step. Each picked module's forward must return one Tensor. Returns how many
   * modules were picked.
   */
  enableActivationCheckpointing(model: Module, select: CheckpointSelector): number {
    return this.#checkpoints.enable(model, select);
  }

  /** Runs one micro-step: gradients sync (and optimizers step) every `gradientAccumulationSteps` calls and at the end of the loader. */
  accumulate<R>(_model: unknown, fn: () => R): R {
    this.gradientState.beginMicroStep();
    return fn();
  }

  /** Clips the gradients' total norm to `maxNorm` (unscaling fp16 gradients first); returns the norm before clipping. */
  clipGradNorm(parameters: Iterable<Tensor> | Tensor, maxNorm: number, normType = 2): number {
    const list = parameters instanceof Tensor ? [parameters] : [...parameters];
    this.unscaleGradients(list);
    return this.strategy.clipGradNorm(list, maxNorm, normType);
  }

  /**
   * fp16: divides the gradients by the loss scale now, once per step, optimizer by optimizer as
   * HF does (every prepared optimizer, or those holding one of `parameters`); other modes: nothing.
   */
  unscaleGradients(parameters?: Tensor[]): void {
    if (this.mixedPrecision !== "fp16") return;
    const wanted = parameters === undefined ? undefined : new Set(parameters);
    for (const optimizer of this.#prepared.optimizers) {
      const params = this.#optimizerParams(optimizer);
      if (wanted !== undefined && !params.some((p) => wanted.has(p))) continue;
      // The same parameter list as its step's, so that the step does not unscale them again.
      this.precision.unscale(params, this.strategy.heldGradients(params));
      for (const p of params) wanted?.delete(p);
    }
    // Parameters no prepared optimizer holds (clipped anyway) are unscaled on their own.
    const rest = [...(wanted ?? [])];
    if (rest.length > 0) this.precision.unscale(rest, this.strategy.heldGradients(rest));
  }

  /** True when the last step of any prepared optimizer was skipped because fp16 gradients overflowed. */
  get optimizerStepWasSkipped(): boolean {
    return [...this.#skipped.values()].some(Boolean);
  }

  /**
   * Bytes of parameters (of prepared models; ZeRO-3: this process's shards and whatever is
   * gathered now), gradients (their `.grad`, plus ZeRO-2/3's partitions) and optimizer state
   * (of prepared optimizers; ZeRO: this process's partition and its master copy) that this
   * process holds now, counted from live tensors; in total, on the device and on the host.
   */
  stateBytes(): StateBytes {
    const params = [...new Set(this.#prepared.models.flatMap((m) => m.parameters()))];
    const optimizers = this.#prepared.optimizers.map((o) => this.strategy.optimizerStateBytes(this.#prepared.unwrapped.get(o) ?? o));
    const held = {
      parameters: this.strategy.parameterBytes(params),
      gradients: this.strategy.gradientBytes(params),
      optimizerState: optimizers.reduce((a, b) => ({ device: a.device + b.device, host: a.host + b.host }), { device: 0, host: 0 }),
    };
    const pick = (where: "device" | "host") => ({
      parameters: held.parameters[where],
      gradients: held.gradients[where],
      optimizerState: held.optimizerState[where],
    });
    const [device, host] = [pick("device"), pick("host")];
    return {
      parameters: device.parameters + host.parameters,
      gradients: device.gradients + host.gradients,
      optimizerState: device.optimizerState + host.optimizerState,
      device,
      host,
    };
  }

  /** Exempts tensors from prepared loaders' step scopes and from `tidy` (see `keep`); returns its argument. */
  keep<T extends Tensor | readonly Tensor[]>(tensors: T): T {
    return keep(tensors);
  }

  /** Runs `fn` under the same autocast as prepared models' forward. */
  autocast<R>(fn: () => R): R {
    return this.precision.autocast(fn);
  }

  #optimizerParams(optimizer: OptimizerLike): Tensor[] {
    if (optimizer.paramGroups) return optimizer.paramGroups.flatMap((g) => [...g.params]);
    return this.#prepared.models.flatMap((m) => m.parameters());
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
    const remainder = this.gradientState.remainder;
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
    this.strategy.agree("waitForEveryone");
    waitForEveryone();
  }

  /** GPU memory of this process's device in bytes: held by tensors, reserved, and the peak held (zeros on the CPU). */
  memory(): { allocated: number; reserved: number; peak: number } {
    if (!this.device.startsWith("cuda")) return { allocated: 0, reserved: 0, peak: 0 };
    return native.cudaMemoryStats(this.cudaIndex());
  }

  /** Forgets the prepared objects and returns cached GPU memory to the driver. */
  freeMemory(): void {
    this.strategy.agree("freeMemory");
    this.#prepared.clear();
    this.strategy.reset();
    this.gradientState.reset();
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
    this.#trackers.init(projectName, config);
  }

  /** Logs `values` to every started tracker at `step` (default: the number of earlier `log` calls); main process only. */
  log(values: LogValues, options: { step?: number } = {}): void {
    this.#trackers.log(values, options.step);
  }

  /** The started tracker named `name` (undefined off the main process). */
  getTracker(name: string): GeneralTracker | undefined {
    return this.#trackers.get(name);
  }

  /** A progress bar over `iterable` drawn on the main process only (see `progress`). */
  progress<T>(iterable: Iterable<T>, options: ProgressOptions = {}): Progress<T> {
    return progress(iterable, { enabled: this.isMainProcess, ...options });
  }

  /** Ends the run: finishes the trackers and leaves the process group after all processes arrive. */
  endTraining(): void {
    this.#trackers.finish();
    this.strategy.agree("endTraining");
    this.strategy.reset();
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
    if (isLoader(skipping)) return this.#iterateAsActive(skipping) as unknown as L;
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
    if (!hasMethods(model, "stateDict")) throw new Error(`saveModel: model must have stateDict(), got ${describe(model)}`);
    checkPath("saveModel", "dir", dir);
    // Every process takes part: ZeRO-3 gathers the parameters one by one.
    this.strategy.agree("saveModel");
    const state = this.strategy.fullStateDict(model);
    try {
      return this.strategy.writesSharedState ? saveWeights(state, dir, options.maxShardSize ?? "10GB") : [];
    } finally {
      // A Module's state dict holds views or copies made for this save (ZeRO-3: host copies).
      if (model instanceof Module) for (const t of Object.values(state)) t.dispose();
    }
  }

  /** The model's full state dict (names to tensors), whatever the strategy (HF's `get_state_dict`). */
  getStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor> {
    this.strategy.agree("getStateDict");
    return this.strategy.fullStateDict(model);
  }

  /** Adds objects with stateDict()/loadStateDict() to what saveState/loadState carry. */
  registerForCheckpointing(...objects: unknown[]): void {
    const bad = objects.flatMap((o, i) => (hasMethods(o, "stateDict", "loadStateDict") ? [] : [i]));
    if (bad.length > 0) throw new Error(`registerForCheckpointing: objects at positions ${bad.join(", ")} lack stateDict() and loadStateDict()`);
    this.#prepared.customObjects.push(...(objects as Stateful[]));
  }

  /**
   * Saves models, optimizers, schedulers, data loader positions, registered objects
   * and RNG states into `dir`, atomically (a crash leaves the previous checkpoint intact).
   */
  saveState(dir?: string): string {
    return this.#checkpointer.save(dir);
  }

  /**
   * Restores everything `saveState` saved (latest automatic checkpoint when `dir` is omitted).
   * Every file is read and checked before anything changes.
   */
  loadState(dir?: string): void {
    this.#checkpointer.load(dir);
  }
}
