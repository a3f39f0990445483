// Captured steps (accelerator.compileStep): a whole training step's GPU work (forward,
// backward, optimizer step) recorded once as a CUDA graph and replayed on later calls, so the
// host launches one graph instead of hundreds of kernels. The function runs as it is for a
// few warm-up calls; the next call captures it, and from then on each call copies its input
// tensors into the captured ones and replays. What cannot be replayed runs uncaptured, with a
// message saying why: inputs of another shape, a capture that failed. The recorded optimizer
// steps read the learning rate from a tensor written before each replay, so a scheduler works
// as usual. Whatever else the recording holds fixed is compared before each replay, and a
// change records the step again: other hyperparameters, non-tensor arguments, which
// parameters require gradients, train/eval modes, and where parameters and optimizer state
// live (a loaded checkpoint replaces the state the recording points at).
import { checkOptionNames, describe } from "./errors.js";
import { native } from "./native.js";
import { Module } from "./nn/module.js";
import type { ModelLike, OptimizerLike, SchedulerLike } from "./prepared.js";
import { keep, tidy, Tensor } from "./tensor.js";

export interface CompileStepOptions {
  /** Calls that run uncaptured first, so that workspaces and optimizer state exist (default 2, at least 1). */
  warmup?: number;
}

/** What a compiled step needs from the Accelerator. */
export interface CompileContext {
  device: string;
  /** Why this run cannot capture steps (several processes, fp16, ...), or null when it can. */
  uncapturable(): string | null;
  models(): readonly ModelLike[];
  optimizers(): readonly OptimizerLike[];
  schedulers(): readonly SchedulerLike[];
  /** Prints on the main process. */
  warn(message: string): void;
}

/** An object literal (a batch, a result), which the walkers below descend into, as into arrays. */
const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype;

/** The non-tensor values in `value` (arguments a recording holds fixed). */
function plainValues(value: unknown): unknown {
  if (value instanceof Tensor) return "tensor";
  if (Array.isArray(value)) return value.map(plainValues);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainValues(v)]));
  return typeof value === "function" || typeof value === "symbol" ? String(value) : value;
}

/** `value` with each tensor replaced by `swap(tensor)`, same structure. */
function mapTensors<T>(value: T, swap: (t: Tensor) => Tensor): T {
  if (value instanceof Tensor) return swap(value) as T;
  if (Array.isArray(value)) return value.map((v) => mapTensors(v, swap)) as T;
  if (isPlainObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapTensors(v, swap)])) as T;
  return value;
}

/** Tensors found in `value`, in the order `mapTensors` visits them. */
function tensorsIn(value: unknown): Tensor[] {
  const found: Tensor[] = [];
  mapTensors(value, (t) => {
    found.push(t);
    return t;
  });
  return found;
}

type OptimizerCore = InstanceType<typeof native.OptimizerCore>;

/** The engine of one of this library's optimizers (which can read the learning rate from a tensor), or null. */
function engineOf(optimizer: OptimizerLike): OptimizerCore | null {
  const core = (optimizer as { core?: unknown }).core;
  return core instanceof native.OptimizerCore ? core : null;
}

const signature = (tensors: readonly Tensor[]): string => tensors.map((t) => `${t.dtype}[${t.shape.join(",")}]@${t.device}`).join(" ");

function onlyTensors(value: unknown): boolean {
  if (value === undefined || value instanceof Tensor) return true;
  if (Array.isArray(value)) return value.every(onlyTensors);
  if (isPlainObject(value)) return Object.values(value).every(onlyTensors);
  return false;
}

interface Captured<R> {
  graph: InstanceType<typeof native.CudaGraph>;
  inputs: Tensor[];
  /** Names of the inputs, for the copy into them. */
  names: string[];
  result: R;
  signature: string;
  /** What else the recording holds fixed (see `fixedState`). */
  fixed: string;
}

/** An Error thrown inside a recording because optimizer state would be created there. */
const stateWhileRecording = (message: string): boolean => message.includes("optimizer state would be created while the step is recorded");

export function compileStep<A extends unknown[], R>(fn: (...args: A) => R, context: CompileContext, options: CompileStepOptions = {}): (...args: A) => R {
  if (typeof fn !== "function") throw new Error(`compileStep: fn must be a function (the training step), got ${describe(fn)}`);
  checkOptionNames("compileStep", options, ["warmup"]);
  const warmup = options.warmup === undefined ? 2 : options.warmup;
  if (typeof warmup !== "number" || !Number.isInteger(warmup) || warmup < 1) {
    throw new Error(`compileStep: warmup must be an integer of at least 1, got ${describe(warmup)}`);
  }
  const cuda = /^cuda(?::(\d+))?$/.exec(context.device);
  let calls = 0;
  let captured: Captured<R> | null = null;
  /** Why every call now runs uncaptured, once said. */
  let off: string | null = cuda ? null : "not on a CUDA device";
  const told = new Set<string>();
  const say = (message: string): void => {
    if (told.has(message)) return;
    told.add(message);
    context.warn(`compileStep: ${message}`);
  };
  const parameters = (): Tensor[] => [...new Set(context.optimizers().flatMap((o) => (o.paramGroups ?? []).flatMap((g) => [...g.params])))];
  // What a recording holds fixed besides the input tensors' shapes: hyperparameters other
  // than learning rates, the arguments that are not tensors, which parameters require
  // gradients, the modules' train/eval modes, and where parameters and optimizer state live.
  const fixedState = (args: A): string =>
    JSON.stringify([
      context.optimizers().map((o) => (o.paramGroups ?? []).map((g) => Object.entries(g).filter(([k]) => k !== "params" && k !== "lr"))),
      plainValues(args),
      parameters().map((p) => p.requiresGrad),
      context.models().flatMap((m) => (m instanceof Module ? m.modules().map((x) => x.training) : [])),
      engines().map((e) => e.storageFingerprint()),
    ]);
  const engines = (): OptimizerCore[] => context.optimizers().flatMap((o) => engineOf(o) ?? []);
  const gradientsLeft = (): boolean =>
    parameters().some((p) => {
      const grad = p.grad;
      grad?.dispose();
      return grad !== null;
    });
  const release = (): void => {
    if (captured === null) return;
    for (const t of [...captured.inputs, ...tensorsIn(captured.result)]) t.dispose();
    captured.graph.release(); // its memory pool too, once a replay in flight is done
    captured = null;
  };
  const giveUp = (why: string): void => {
    release();
    // Gradients made while capturing hold no values: drop them before running uncaptured.
    native.nnClearGrads(parameters());
    off = why;
    say(`${why}; steps run uncaptured from now on`);
  };

  const capture = (args: A): void => {
    const inputs = tensorsIn(args);
    const statics = inputs.map((t) => keep(t.clone()));
    let k = 0;
    const staticArgs = mapTensors(args, () => statics[k++]);
    if (gradientsLeft()) {
      for (const t of statics) t.dispose();
      return giveUp("gradients exist before the step; call optimizer.zeroGrad() inside the compiled function, after optimizer.step()");
    }
    const schedulers = context.schedulers().map((s) => JSON.stringify(s.stateDict()));
    // Accumulators made by earlier (uncaptured) steps would tie backward to the default stream.
    native.nnResetGradAccumulators(parameters());
    const graph = new native.CudaGraph(Number(cuda?.[1] ?? 0));
    const fixed = fixedState(args);
    let result: R;
    try {
      for (const engine of engines()) engine.recordLr(true);
      graph.begin();
      // Detached, so that the recorded autograd graph is freed with the step's other tensors.
      result = tidy(() => mapTensors(fn(...staticArgs), (t) => t.detach()));
      graph.end();
    } catch (error) {
      graph.abort();
      graph.release();
      for (const t of statics) t.dispose();
      const message = error instanceof Error ? error.message : String(error);
      if (stateWhileRecording(message)) {
        // Run uncaptured once (creating the state), and record the next call.
        native.nnClearGrads(parameters());
        say("optimizer state was still to be created (a parameter without a gradient in the warm-up calls, or a new param group): that call ran uncaptured");
        return;
      }
      return giveUp(`capturing the step failed (${message.split("\n")[0]}); a captured step may not read values on the host (item(), toArray(), clipGradNorm's returned norm) or depend on them`);
    } finally {
      for (const engine of engines()) engine.recordLr(false);
    }
    const names = statics.map((_, i) => `compileStep input ${i}`);
    captured = { graph, inputs: statics, names, result, signature: signature(inputs), fixed };
    keep(tensorsIn(result));
    if (!onlyTensors(result)) return giveUp("the compiled function must return tensors (alone, in arrays or in plain objects) or nothing");
    if (context.schedulers().some((s, i) => JSON.stringify(s.stateDict()) !== schedulers[i])) {
      giveUp("a learning-rate scheduler stepped inside the compiled function");
      throw new Error("compileStep: a learning-rate scheduler stepped inside the compiled function, which runs on the host once, at capture; call scheduler.step() outside it");
    }
    if (gradientsLeft()) return giveUp("gradients are left after the step; end the compiled function with optimizer.zeroGrad()");
    // The uncaptured steps' activations are cached by the allocator, unused from now on: the
    // recorded step has a memory pool of its own.
    native.cudaEmptyCache();
  };

  return (...args: A): R => {
    calls += 1;
    if (off === null && calls > warmup) {
      const foreign = context.optimizers().some((o) => engineOf(o) === null);
      const why = context.uncapturable() ?? (foreign ? "an optimizer that is not one of accelerate-ts's (its JS step would run once, when recording)" : null);
      if (why !== null) {
        off = why;
        say(`${why}: steps run uncaptured`);
      }
    }
    if (off !== null || calls <= warmup) return fn(...args);
    const inputs = tensorsIn(args);
    if (captured !== null && captured.fixed !== fixedState(args)) {
      say(
        "something the recorded step holds fixed changed (hyperparameters other than learning rates, non-tensor arguments, requiresGrad, train/eval, or the parameters' or optimizer state's storage, as after loadState); capturing it again. A change at every call makes every call capture",
      );
      release();
    }
    if (captured !== null && captured.signature !== signature(inputs)) {
      say(`inputs of another shape (${signature(inputs)}; captured: ${captured.signature}) run uncaptured`);
      return fn(...args);
    }
    if (captured === null) {
      capture(args);
      if (captured === null) return fn(...args);
    } else {
      native.nnLoadInPlace(captured.names, captured.inputs, inputs);
    }
    const step = captured as Captured<R>;
    for (const engine of engines()) engine.writeLr();
    step.graph.replay();
    return mapTensors(step.result, (t) => t.clone());
  };
}
