// Activation checkpointing (HF's gradient_checkpointing, torch.utils.checkpoint): the selected
// modules run their forward without recording a graph, so their intermediate activations are
// freed at once; `accelerator.backward` recomputes each of them, last first, with the graph,
// and backpropagates through it. Between forward and backward only the modules' inputs and
// outputs stay alive. Everything is driven from the JS thread: `loss.backward()` stops at a
// checkpointed module's output (a leaf), whose gradient the recomputed module then receives.
import { Module } from "./nn/module.js";
import { native } from "./native.js";
import { isGradEnabled, keep, noGrad, Tensor, tidy } from "./tensor.js";

/** Which modules to checkpoint: a class (e.g. a transformer block) or a predicate. */
export type CheckpointSelector = (abstract new (...args: never[]) => Module) | ((module: Module, name: string) => boolean);

interface Frame {
  /** The module's forward as it was when checkpointing was enabled. */
  forward: (...args: unknown[]) => unknown;
  args: unknown[];
  /** What the caller got: a leaf whose gradient backward fills. */
  output: Tensor;
  /** The generators' states before the forward, so that dropout draws the same masks again. */
  rng: { cpu: Tensor; cuda?: Tensor };
}

/** fp8 Linear layers' passes (`native.fp8Pass`): a checkpointed module's first run, and its recomputation. */
const FP8_CHECKPOINTED = 1;
const FP8_RECOMPUTE = 2;

/** Runs `fn` with fp8 Linear layers told which pass it is: the recomputation scales as the first run did. */
function fp8Pass<T>(pass: number, fn: () => T): T {
  const previous = native.fp8Pass(pass);
  try {
    return fn();
  } finally {
    native.fp8Pass(previous);
  }
}

function disposeRng(state: { cpu: Tensor; cuda?: Tensor }): void {
  state.cpu.dispose();
  state.cuda?.dispose();
}

export class ActivationCheckpoints {
  #tape: Frame[] = [];
  readonly #cudaIndex: number | null;
  readonly #autocast: <R>(fn: () => R) => R;
  readonly #wrapped = new WeakSet<Module>();
  /** The checkpointed modules and everything inside them: a module there is not picked again. */
  readonly #covered = new WeakSet<Module>();

  /** `autocast` runs the recomputation under the prepared models' precision; `device` is the run's. */
  constructor(device: string, autocast: <R>(fn: () => R) => R) {
    const cuda = /^cuda(?::(\d+))?$/.exec(device);
    this.#cudaIndex = cuda ? Number(cuda[1] ?? 0) : null;
    this.#autocast = autocast;
  }

  /**
   * Checkpoints every module of `model` that `select` picks; returns how many. A picked module
   * inside (or around) one already checkpointed is left as it is: recomputing the outer one
   * already recomputes it, and nested checkpoints would leave the inner one without gradients.
   */
  enable(model: Module, select: CheckpointSelector): number {
    if (!(model instanceof Module)) throw new Error("enableActivationCheckpointing: model must be an nn.Module");
    const picks = (module: Module, name: string): boolean =>
      select.prototype instanceof Module || select === Module
        ? module instanceof (select as abstract new (...args: never[]) => Module)
        : (select as (module: Module, name: string) => boolean)(module, name);
    let count = 0;
    for (const [name, module] of model.namedModules()) {
      if (!picks(module, name) || this.#covered.has(module) || module.modules().some((m) => this.#wrapped.has(m))) continue;
      this.#wrap(module, name === "" ? module.constructor.name : name);
      for (const inner of module.modules()) this.#covered.add(inner);
      count += 1;
    }
    return count;
  }

  #wrap(module: Module, name: string): void {
    const forward = module.forward.bind(module) as (...args: unknown[]) => unknown;
    module.forward = (...args: unknown[]): unknown => {
      if (!module.training || !isGradEnabled()) return forward(...args);
      const rng = this.#rngState();
      const out = fp8Pass(FP8_CHECKPOINTED, () => noGrad(() => forward(...args)));
      if (!(out instanceof Tensor)) {
        throw new Error(`enableActivationCheckpointing: ${name}.forward must return one Tensor to be checkpointed, got ${typeof out}`);
      }
      const output = out.detach();
      output.requiresGrad = true;
      this.#tape.push({ forward, args, output, rng });
      return output;
    };
    this.#wrapped.add(module);
  }

  #rngState(): { cpu: Tensor; cuda?: Tensor } {
    const cpu = keep(native.cpuRngState());
    return this.#cudaIndex === null ? { cpu } : { cpu, cuda: keep(native.cudaRngState(this.#cudaIndex)) };
  }

  #setRng(state: { cpu: Tensor; cuda?: Tensor }): void {
    native.setCpuRngState(state.cpu);
    if (state.cuda !== undefined && this.#cudaIndex !== null) native.setCudaRngState(this.#cudaIndex, state.cuda);
  }

  /** Whether modules ran checkpointed since the last backward: backward will take several passes. */
  get pending(): boolean {
    return this.#tape.length > 0;
  }

  /**
   * After `loss.backward()`: recomputes the checkpointed modules, last first, and carries the
   * gradients their outputs received back through them to their inputs.
   */
  backward(): void {
    const tape = this.#tape;
    this.#tape = [];
    try {
      while (tape.length > 0) {
        const frame = tape.pop() as Frame;
        try {
          this.#replay(frame);
        } finally {
          disposeRng(frame.rng);
        }
      }
    } finally {
      for (const frame of tape) disposeRng(frame.rng);
    }
  }

  /**
   * Recomputes one module and backpropagates through it. Everything the recomputation makes
   * is freed as soon as its gradients have moved on (inside `tidy`), and so is the gradient
   * the module's output received: otherwise every module's recomputed activations would stay
   * alive until the step ends, as many as without checkpointing.
   */
  #replay(frame: Frame): void {
    const grad = frame.output.grad;
    if (grad === null) return;
    tidy(() => {
      const inputs = frame.args.map((a) => {
        if (!(a instanceof Tensor) || !a.requiresGrad) return a;
        const leaf = a.detach();
        leaf.requiresGrad = true;
        return leaf;
      });
      const now = this.#rngState();
      let out: unknown;
      try {
        this.#setRng(frame.rng);
        out = fp8Pass(FP8_RECOMPUTE, () => this.#autocast(() => frame.forward(...inputs)));
      } finally {
        this.#setRng(now);
        disposeRng(now);
      }
      (out as Tensor).backward(grad);
      frame.args.forEach((a, i) => {
        const leaf = inputs[i];
        if (leaf === a || !(a instanceof Tensor) || !(leaf instanceof Tensor) || leaf.grad === null) return;
        a.backward(leaf.grad);
      });
    });
    grad.dispose();
    native.nnClearGrads([frame.output]);
  }

  /**
   * Before an optimizer step: a checkpointed output that got a gradient which was never carried
   * through its module came from `loss.backward()`; its module would silently get no gradients.
   */
  checkAllCarried(): void {
    const missed = this.#tape.some((f) => f.output.grad !== null);
    for (const frame of this.#tape) disposeRng(frame.rng);
    this.#tape = [];
    if (missed) {
      throw new Error(
        "step: checkpointed modules (enableActivationCheckpointing) get their gradients in accelerator.backward(loss); loss.backward() left them without any",
      );
    }
  }
}
