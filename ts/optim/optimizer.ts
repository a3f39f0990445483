// Optimizers over shared parameters: SGD, Adam and AdamW with PyTorch's update rules
// (libtorch's fused kernels in the engine), live param groups, and plain-data state dicts.
import { describe, withName } from "../errors.js";
import type { OptimizerCore, OptimizerOptions, ParamGroupState } from "../../index.js";
import { native } from "../native.js";
import { Tensor } from "../tensor.js";
import { paramGroups, tensorList } from "./params.js";

export interface SGDOptions {
  /** Learning rate (default 1e-3, as torch 2.11). */
  lr?: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
  maximize?: boolean;
}

export interface AdamOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** L2 penalty added to the gradient (Adam) or decoupled decay (AdamW, default 0.01). */
  weightDecay?: number;
  amsgrad?: boolean;
  maximize?: boolean;
}

export type AdamWOptions = AdamOptions;

/** A param group as given to a constructor: its parameters, and options overriding the optimizer's. */
export type ParamGroupInput<O> = O & { params: Iterable<Tensor> | Tensor };
/** Parameters (any iterable of tensors, such as `module.parameters()`) or param groups. */
export type Params<O> = Iterable<Tensor> | Iterable<ParamGroupInput<O>>;

/**
 * A live param group: reading an option gives its current value; assigning one changes it
 * for the next `step()` (schedulers assign `lr`). Values are checked like the constructor's.
 */
export type ParamGroup<O> = Required<O> & { readonly params: readonly Tensor[] };

/** Plain data for a checkpoint writer; `state` keys are "<param index>.<name>", as PyTorch's. */
export interface OptimizerStateDict<O> {
  /** The live state tensors (`step()` changes them); e.g. "0.exp_avg", "0.exp_avg_sq", "0.step". */
  state: Record<string, Tensor>;
  paramGroups: Array<Required<O> & { params: number[] }>;
}

type OptionKind = "number" | "boolean" | "pair";
type Schema = Record<string, OptionKind>;

const SGD_SCHEMA: Schema = {
  lr: "number", momentum: "number", dampening: "number", weightDecay: "number", nesterov: "boolean", maximize: "boolean",
};
const ADAM_SCHEMA: Schema = {
  lr: "number", betas: "pair", eps: "number", weightDecay: "number", amsgrad: "boolean", maximize: "boolean",
};
// Every option of every optimizer: a state dict is checked against these, and the engine
// then names options that belong to another optimizer.
const ANY_SCHEMA: Schema = { ...SGD_SCHEMA, ...ADAM_SCHEMA };

function checkOptions(op: string, schema: Schema, options: Record<string, unknown>): OptimizerOptions {
  const names = Object.keys(schema);
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options)) {
    const kind = schema[name];
    if (kind === undefined) throw new Error(`${op}: unknown option ${name}; it takes ${names.join(", ")}`);
    if (value === undefined) continue;
    const ok =
      kind === "pair"
        ? Array.isArray(value) && value.length === 2 && value.every((v) => typeof v === "number")
        : typeof value === kind;
    if (!ok) {
      const wanted = kind === "pair" ? "an array of 2 numbers" : `a ${kind}`;
      throw new Error(`${op}: option ${name} must be ${wanted}, got ${describe(value)}`);
    }
    out[name] = value;
  }
  return out as OptimizerOptions;
}

function withoutUndefined<T extends object>(options: T): T {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as T;
}

export abstract class Optimizer<O extends object> {
  /** The engine's optimizer (for the Accelerator and gradient scaling). */
  readonly core: OptimizerCore;
  readonly paramGroups: ParamGroup<O>[] = [];
  readonly #name: string;
  readonly #schema: Schema;

  protected constructor(name: string, schema: Schema, params: Params<O>, options: O) {
    this.#name = name;
    this.#schema = schema;
    const groups = paramGroups(name, params);
    const defaults = checkOptions(name, schema, { ...options } as Record<string, unknown>);
    const groupOptions = groups.map((g, i) => checkOptions(`${name}: param group ${i}`, schema, g.options));
    this.core = withName(name, () => new native.OptimizerCore(
      name,
      groups.flatMap((g) => g.params),
      groups.map((g) => g.params.length),
      defaults,
      groupOptions,
    ));
    groups.forEach((g) => this.#addView(g.params));
  }

  #addView(params: Tensor[]): void {
    const index = this.paramGroups.length;
    const core = this.core;
    const view = { params: Object.freeze([...params]) };
    for (const name of Object.keys(this.#schema)) {
      Object.defineProperty(view, name, {
        enumerable: true,
        get: () => (core.groupOptions(index) as Record<string, unknown>)[name],
        set: (value: unknown) => {
          core.setGroupOptions(index, checkOptions(`${this.#name}: param group ${index}`, this.#schema, { [name]: value }));
        },
      });
    }
    this.paramGroups.push(view as unknown as ParamGroup<O>);
  }

  /** Adds a param group; options it leaves out come from the constructor's options. */
  addParamGroup(group: ParamGroupInput<O>): void {
    const op = `${this.#name}.addParamGroup`;
    const [{ params, options }] = paramGroups(op, [group]);
    this.core.addParamGroup(params, checkOptions(op, this.#schema, options));
    this.#addView(params);
  }

  /** Updates every parameter that has a gradient, in place. */
  step(): void {
    this.core.step();
  }

  /** Sets gradients to null (the default, as PyTorch), or to zeros with `setToNone = false`. */
  zeroGrad(setToNone = true): void {
    this.core.zeroGrad(setToNone);
  }

  stateDict(): OptimizerStateDict<O> {
    const lists = this.core.stateDict();
    const state: Record<string, Tensor> = {};
    lists.keys.forEach((key, i) => {
      state[key] = lists.tensors[i];
    });
    const groups = lists.paramGroups.map((g) => ({ ...withoutUndefined(g.options), params: g.params }));
    return { state, paramGroups: groups as OptimizerStateDict<O>["paramGroups"] };
  }

  /**
   * Restores hyperparameters and (copies of) state saved by `stateDict()`, matching parameters by
   * their position in their groups. Throws, changing nothing, if the groups or shapes differ.
   */
  loadStateDict(stateDict: OptimizerStateDict<O>): void {
    const op = `${this.#name}.loadStateDict`;
    const { state, paramGroups: groups } = (stateDict ?? {}) as Partial<OptimizerStateDict<O>>;
    if (state === null || typeof state !== "object" || !Array.isArray(groups)) {
      throw new Error(`${op}: expected { state: Record<string, Tensor>, paramGroups: [...] }`);
    }
    const keys = Object.keys(state);
    const tensors = tensorList(op, "state", keys.map((k) => state[k]));
    const groupStates = groups.map((group, g): ParamGroupState => {
      const { params, ...options } = (group ?? {}) as Record<string, unknown>;
      if (!Array.isArray(params) || !params.every((p) => Number.isInteger(p))) {
        throw new Error(`${op}: paramGroups[${g}].params must be an array of parameter indices`);
      }
      const known = Object.fromEntries(Object.entries(options).filter(([name]) => name in ANY_SCHEMA));
      return { options: checkOptions(`${op}: param group ${g}`, ANY_SCHEMA, known), params: params as number[] };
    });
    this.core.loadStateDict(keys, tensors, groupStates);
  }
}

/** Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and weight decay. */
export class SGD extends Optimizer<SGDOptions> {
  constructor(params: Params<SGDOptions>, options: SGDOptions = {}) {
    super("SGD", SGD_SCHEMA, params, options);
  }
}

/** Adam (Kingma & Ba), weight decay as an L2 term on the gradient; optional AMSGrad. */
export class Adam extends Optimizer<AdamOptions> {
  constructor(params: Params<AdamOptions>, options: AdamOptions = {}) {
    super("Adam", ADAM_SCHEMA, params, options);
  }
}

/** Adam with decoupled weight decay (Loshchilov & Hutter), default weightDecay 0.01. */
export class AdamW extends Optimizer<AdamWOptions> {
  constructor(params: Params<AdamWOptions>, options: AdamWOptions = {}) {
    super("AdamW", ADAM_SCHEMA, params, options);
  }
}
