// ZeRO stages 2 and 3 (DeepSpeed's stages, FSDP2's SHARD_GRAD_OP and full shard): gradients
// and optimizer state are partitioned, and in stage 3 the parameters too. Each parameter is cut
// into one shard per process. Every module that owns parameters is a unit: its gradients are
// reduce-scattered together during backward, once all have arrived. In stage 3, every module
// that owns parameters is also what is gathered (a Sequential of built-in layers, which runs in
// the engine as one, is one unit): its forward gathers the unit's parameters and releases them
// after; backward gathers them again just before it needs them and reduce-scatters their
// gradients into this process's shards (crates/core/shim/zero3.cpp). A parameter read during
// another module's forward (a tied weight used as `this.embedding.weight`) is gathered for
// that module too and remembered, so its backward gathers it as well. Parameters with fewer
// elements than the persistence threshold stay whole on every process.
import type { OptimizerCore, Zero3Core, Zero3Sharder } from "../../index.js";
import { tensorsIn, type StateValue } from "../checkpoint.js";
import { native } from "../native.js";
import { Module } from "../nn/module.js";
import { nativeLayerOf } from "../nn/native_module.js";
import { Optimizer } from "../optim/optimizer.js";
import type { ModelLike, OptimizerLike } from "../prepared.js";
import type { ProcessState } from "../state.js";
import { Tensor, tensor, tidy } from "../tensor.js";
import { AGREED_OPERATIONS, partitionedHooks, SingleProcess, type AgreedOperation, type HeldBytes, type OptimizerHooks } from "./strategy.js";

export interface Zero3Options {
  /** Parameters with fewer elements stay whole (DeepSpeed's stage3_param_persistence_threshold). */
  persistBelow: number;
  /** The optimizer state and step on the host. */
  offloadOptimizer: boolean;
  /** The shards in host memory between uses. */
  offloadParameters: boolean;
  /** Bytes of the next units' parameters gathered ahead (DeepSpeed's stage3_prefetch_bucket_size). */
  prefetchBytes: number;
}

interface Unit {
  index: number;
  /** Parameter indices the unit gathers (its module's own, then those learnt during forward). */
  params: number[];
}

interface ShardedModel {
  sharder: Zero3Sharder;
  params: Tensor[];
  indexOf: Map<Tensor, number>;
  persistent: boolean[];
  units: Unit[];
  /** How many forward gathers hold each parameter now (this side's view, for tied-weight reads). */
  held: number[];
  /** The units whose forward runs now, innermost last, with the extra parameters each gathered. */
  running: { unit: Unit; extra: number[] }[];
}

const join = (prefix: string, name: string): string => (prefix === "" ? name : `${prefix}.${name}`);

/** `module`'s own parameters (not its children's), by property name. */
function ownParameters(module: Module): [string, Tensor][] {
  return module.namedParameters().filter(([name]) => !name.includes("."));
}

export class ZeroSharded extends SingleProcess {
  override readonly name = "zero";
  /** 3: parameters sharded too; 2: parameters whole (every one persistent), gradients and optimizer state sharded. */
  readonly stage: 2 | 3;
  readonly #options: Zero3Options;
  readonly #models = new Map<ModelLike, ShardedModel>();
  readonly #optimizers = new Map<OptimizerLike, { zero: Zero3Core; core: OptimizerCore; model: ShardedModel }>();
  /** Every sharded parameter, with its name, across the prepared models. */
  readonly #sharded = new Map<Tensor, string>();
  /** What `reset` undoes, in reverse: the wrapped forwards, watched properties and loadStateDict. */
  readonly #undo: (() => void)[] = [];

  constructor(state: ProcessState, stage: 2 | 3, options: Zero3Options) {
    super(state);
    this.stage = stage;
    this.#options = options;
  }

  override setupModel(model: ModelLike): void {
    if (!(model instanceof Module)) {
      throw new Error(`prepare: ZeRO stage ${this.stage} shards the parameters of an nn.Module; got ${model.constructor.name}`);
    }
    const named = model.namedParameters();
    const shared = named.find(([, p]) => this.#sharded.has(p));
    if (shared !== undefined) {
      throw new Error(
        `prepare: parameter "${shared[0]}" also belongs to a model prepared before (as "${this.#sharded.get(shared[1])}"); ` +
          `under ZeRO stage ${this.stage} each parameter belongs to one prepared model: prepare the model that holds both`,
      );
    }
    const params = named.map(([, p]) => p);
    if (this.state.numProcesses > 1) native.distBroadcastParameters(params);
    const indexOf = new Map(params.map((p, i) => [p, i]));
    const units: Unit[] = [];
    const modules: [Module, Unit][] = [];
    const covered = new Set<Module>();
    for (const [, module] of model.namedModules()) {
      if (covered.has(module)) continue;
      // A container of built-in layers runs them in the engine without their forward: one unit.
      const whole = nativeLayerOf(module) !== undefined && module.children().length > 0;
      if (whole) for (const m of module.modules()) covered.add(m);
      const own = whole ? module.parameters() : ownParameters(module).map(([, t]) => t);
      // A module with children is a unit even without parameters of its own: it may read a
      // child's (a tied weight), which its unit then gathers.
      if (own.length === 0 && module.children().length === 0) continue;
      const unit = { index: units.length, params: own.map((t) => indexOf.get(t) as number) };
      units.push(unit);
      modules.push([module, unit]);
      // Its layers, called one by one (iterating the Sequential), gather the whole unit.
      if (whole) for (const m of module.modules()) if (m !== module) modules.push([m, unit]);
    }
    const sharder = new native.Zero3Sharder(
      params,
      units.map((u) => u.params),
      this.#options.persistBelow,
      this.#options.prefetchBytes,
      this.#options.offloadParameters,
    );
    const entry: ShardedModel = {
      sharder,
      params,
      indexOf,
      persistent: params.map((p) => p.numel < this.#options.persistBelow),
      units,
      held: params.map(() => 0),
      running: [],
    };
    // With every parameter whole (optimizer offload alone), forward has nothing to gather.
    const sharded = entry.persistent.some((p) => !p);
    for (const [module, unit] of sharded ? modules : []) {
      this.#wrapForward(entry, module, unit);
      if (unit.params.length > 0 && !covered.has(module)) {
        for (const [name, tensor] of ownParameters(module)) this.#watchReads(entry, module, name, tensor);
      }
    }
    // Loading weights (after prepare, or a checkpoint) writes each parameter's shard from the
    // whole value, without gathering the model; buffers load as usual.
    const byName = new Map<string, number>();
    for (const [prefix, module] of model.namedModules()) {
      for (const [name, t] of ownParameters(module)) byName.set(join(prefix, name), indexOf.get(t) as number);
    }
    this.#replace(model, "loadStateDict", (original) => (...args: unknown[]) => {
      const [stateDict, options] = args as Parameters<Module["loadStateDict"]>;
      const result = model.checkStateDict(stateDict, options);
      const rest = new Map<string, Tensor>();
      for (const [key, source] of stateDict instanceof Map ? stateDict : Object.entries(stateDict)) {
        const index = byName.get(key);
        if (index === undefined) rest.set(key, source);
        else sharder.load(index, source);
      }
      original(rest, { strict: false });
      for (const optimizer of this.#optimizers.values()) if (optimizer.model === entry) optimizer.zero.refreshMasters();
      return result;
    });
    for (const [name, p] of named) this.#sharded.set(p, name);
    this.#models.set(model, entry);
  }

  /** Replaces `object[key]` (a method) by `make(original)`, and records how to put it back. */
  #replace(object: object, key: string, make: (original: (...args: unknown[]) => unknown) => (...args: unknown[]) => unknown): void {
    const target = object as Record<string, unknown>;
    const own = Object.getOwnPropertyDescriptor(object, key);
    const original = (target[key] as (...args: unknown[]) => unknown).bind(object);
    target[key] = make(original);
    this.#undo.push(() => {
      if (own === undefined) delete target[key];
      else Object.defineProperty(object, key, own);
    });
  }

  /** The module's forward gathers its unit, hooks its outputs for backward, and releases the unit. */
  #wrapForward(entry: ShardedModel, module: Module, unit: Unit): void {
    this.#replace(module, "forward", (forward) => (...args: unknown[]): unknown => {
      const params = [...unit.params];
      entry.sharder.gatherUnit(unit.index);
      for (const i of params) entry.held[i] += 1;
      const frame = { unit, extra: [] as number[] };
      entry.running.push(frame);
      try {
        let out = forward(...args);
        // A module returning its own parameter (or a view of it) gets a copy: the release frees it.
        if (out instanceof Tensor && entry.sharder.aliasesUnit(unit.index, out)) out = out.clone();
        const outputs = tensorsIn(out as StateValue).filter((t) => t.requiresGrad);
        if (outputs.length > 0) entry.sharder.hookOutputs(unit.index, outputs);
        return out;
      } finally {
        entry.running.pop();
        const release = [...params, ...frame.extra];
        for (const i of release) entry.held[i] -= 1;
        entry.sharder.release(release);
      }
    });
  }

  /**
   * Reading `module[name]` while another module's forward runs (a tied weight) gathers the
   * parameter for that module and adds it to the module's unit for backward.
   */
  #watchReads(entry: ShardedModel, module: Module, name: string, tensor: Tensor): void {
    const index = entry.indexOf.get(tensor) as number;
    if (entry.persistent[index]) return;
    const descriptor = Object.getOwnPropertyDescriptor(module, name);
    if (descriptor === undefined) return;
    let value = descriptor.value as unknown;
    const read = descriptor.get ?? (() => value);
    const write = descriptor.set ?? ((v: unknown) => void (value = v));
    Object.defineProperty(module, name, {
      enumerable: descriptor.enumerable,
      configurable: true,
      get: () => {
        const frame = entry.running.at(-1);
        if (frame !== undefined && entry.held[index] === 0) {
          entry.sharder.gather([index]);
          entry.held[index] += 1;
          frame.extra.push(index);
          if (!frame.unit.params.includes(index)) {
            frame.unit.params.push(index);
            entry.sharder.addToUnit(frame.unit.index, [index]);
          }
        }
        return read();
      },
      set: (v: unknown) => {
        if (v !== read()) throw new Error(`${module.constructor.name}.${name}: ZeRO stage 3 shards this parameter; it cannot be replaced after prepare`);
        write(v);
      },
    });
    this.#undo.push(() => Object.defineProperty(module, name, descriptor));
  }

  override setupOptimizer(optimizer: OptimizerLike): OptimizerHooks {
    if (!(optimizer instanceof Optimizer)) {
      throw new Error(`prepare: ZeRO partitions the optimizers of optim (SGD, Adam, AdamW); got ${optimizer.constructor.name}`);
    }
    const first = optimizer.paramGroups.flatMap((g) => g.params)[0];
    const model = [...this.#models.values()].find((m) => first !== undefined && m.indexOf.has(first));
    if (model === undefined) {
      throw new Error("prepare: under ZeRO stage 3 an optimizer's parameters must belong to a model prepared with it (or before it)");
    }
    const core = optimizer.core;
    const zero = new native.Zero3Core(core, model.sharder, this.#options.offloadOptimizer);
    this.#optimizers.set(optimizer, { zero, core, model });
    return { ...partitionedHooks(optimizer, zero), zeroGrad: () => model.sharder.clearGradients(zero.indices) };
  }

  /** How many unit gathers found their unit already prefetched (the prefetch at work). */
  get prefetchHits(): number {
    return [...this.#models.values()].reduce((n, m) => n + m.sharder.prefetchHits, 0);
  }

  /** Gradients reach the shards during backward; what is left (unused parameters) goes now. */
  override afterBackward(): void {
    for (const { sharder } of this.#models.values()) sharder.settle();
  }

  /** The shards of the gradients of `parameters` (this process's), after backward. */
  override heldGradients(parameters: Tensor[]): Tensor[] {
    const held: Tensor[] = [];
    for (const model of this.#models.values()) {
      const idx = [...new Set(parameters.flatMap((p) => model.indexOf.get(p) ?? []))];
      if (idx.length > 0) held.push(...model.sharder.gradients(idx));
    }
    return held;
  }

  /** The norm across processes of the gradients of `parameters`, from their shards. */
  override clipGradNorm(parameters: Tensor[], maxNorm: number, normType: number): number {
    return native.distClipShardedGradNorm(this.heldGradients(parameters), maxNorm, normType);
  }

  /** Gathered one parameter at a time and copied to the host: never a whole model on the device. */
  override fullStateDict(model: { stateDict(): Record<string, Tensor> }): Record<string, Tensor> {
    const entry = this.#models.get(model as unknown as ModelLike);
    if (entry === undefined || !(model instanceof Module)) return model.stateDict();
    const gathered = new Map<string, Tensor>();
    for (const [prefix, module] of model.namedModules()) {
      for (const [name, t] of ownParameters(module)) {
        const index = entry.indexOf.get(t);
        if (index === undefined) continue;
        entry.sharder.gather([index]);
        try {
          gathered.set(join(prefix, name), t.device === "cpu" ? t.detach().clone() : t.detach().to(undefined, "cpu"));
        } finally {
          entry.sharder.release([index]);
        }
      }
    }
    const out: Record<string, Tensor> = {};
    for (const [key, t] of Object.entries(model.stateDict())) {
      const whole = gathered.get(key);
      if (whole === undefined) {
        out[key] = t;
      } else {
        out[key] = whole;
        t.dispose();
      }
    }
    return out;
  }

  override parameterBytes(_parameters: Tensor[]): HeldBytes {
    return this.#sum([...this.#models.values()].map((m) => m.sharder.parameterBytes()));
  }

  override gradientBytes(_parameters: Tensor[]): HeldBytes {
    return this.#sum([...this.#models.values()].map((m) => m.sharder.gradientBytes()));
  }

  override optimizerStateBytes(optimizer: OptimizerLike): HeldBytes {
    const entry = this.#optimizers.get(optimizer);
    return entry ? entry.zero.stateBytes() : super.optimizerStateBytes(optimizer);
  }

  #sum(parts: HeldBytes[]): HeldBytes {
    return parts.reduce((a, b) => ({ device: a.device + b.device, host: a.host + b.host }), { device: 0, host: 0 });
  }

  /** Every process must reach `op` together: one small all-gather of its code says whether they did. */
  override agree(op: AgreedOperation): void {
    if (this.#models.size === 0 || !native.distIsInitialized()) return;
    const code = AGREED_OPERATIONS.indexOf(op);
    const codes = tidy(() => native.distAllGather(tensor([code], { dtype: "int64" })).toArray() as number[]);
    const elsewhere = codes.flatMap((c, rank) => (c === code ? [] : [`process ${rank} is in ${AGREED_OPERATIONS[c] ?? "another operation"}`]));
    if (elsewhere.length > 0) {
      throw new Error(`${op} (ZeRO stage 3): every process must call it at the same point, since it gathers parameters with the others; ${elsewhere.join(", ")}`);
    }
  }

  /** The models become whole again on every process, as they were before prepare (freeMemory, endTraining). */
  override reset(): void {
    for (const { sharder } of this.#models.values()) sharder.unshard();
    for (const undo of this.#undo.reverse()) undo();
    this.#undo.length = 0;
    this.#models.clear();
    this.#optimizers.clear();
    this.#sharded.clear();
  }
}
