// The base of modules that run in the engine: a thin wrapper over a NativeLayer whose
// parameters appear as ordinary properties sharing the engine's tensors.
import type { NativeLayer } from "../../index.js";
import { describe } from "../errors.js";
import { keep, Tensor } from "../tensor.js";
import { Module } from "./module.js";

const NATIVE_LAYER = Symbol("accelerate.nativeLayer");

interface NativeBacked {
  readonly [NATIVE_LAYER]: NativeLayer | undefined;
}

/** The engine layer behind `module`, if it (and, for containers, every child) runs natively. */
export function nativeLayerOf(module: Module): NativeLayer | undefined {
  return (module as unknown as Partial<NativeBacked>)[NATIVE_LAYER];
}

/** Lets a container (Sequential) say which native layer, if any, runs it; computed on each access. */
export function defineNativeLayer(target: object, get: () => NativeLayer | undefined): void {
  Object.defineProperty(target, NATIVE_LAYER, { get, enumerable: false, configurable: true });
}

// The `forward` methods that run `nativeLayerOf(this)` on their one Tensor when it is defined
// (NativeModule's, Sequential's), and not a user's override of them.
const NATIVE_FORWARDS = new WeakSet<object>();

/** Marks `forward` as one that runs the module's native layer, if any, on its one Tensor argument. */
export function markNativeForward(forward: object): void {
  NATIVE_FORWARDS.add(forward);
}

/**
 * `forward.apply(module, args)` with a float16 or bfloat16 output returned as float32 by the
 * engine (inside the last autograd node, no conversion node after it) when `forward` is a
 * marked one, the module runs natively and `args` is one Tensor; undefined otherwise, for the
 * caller to run `forward` and convert.
 */
export function nativeForwardFloat32(module: object, forward: object, args: unknown[]): Tensor | undefined {
  if (!NATIVE_FORWARDS.has(forward) || args.length !== 1 || !(args[0] instanceof Tensor)) return undefined;
  if (!(module instanceof Module)) return undefined;
  return nativeLayerOf(module)?.forward(args[0], module.training, true);
}

export abstract class NativeModule extends Module {
  readonly #layer: NativeLayer;

  constructor(layer: NativeLayer) {
    super();
    this.#layer = layer;
    Object.defineProperty(this, NATIVE_LAYER, { value: layer, enumerable: false });
    const tensors = layer.parameters();
    layer.parameterNames().forEach((name, i) => this.#adopt(layer, name, tensors[i] ?? null));
  }

  /** Exposes parameter `name` as a property; assigning a Tensor of the same shape shares it (weight tying). */
  #adopt(layer: NativeLayer, name: string, initial: Tensor | null): void {
    let current = initial;
    if (initial !== null) initial._parameterOf = `${layer.kind}.${name}`;
    Object.defineProperty(this, name, {
      enumerable: true,
      configurable: true,
      get: () => current,
      set: (value: unknown) => {
        if (value === current) return;
        if (!(value instanceof Tensor)) {
          throw new Error(`${layer.kind}.${name}: can only be set to a Tensor of the same shape, got ${String(value)}`);
        }
        layer.setParameter(name, value);
        current = keep(value);
        current._parameterOf ??= `${layer.kind}.${name}`;
      },
    });
    this.registerParameter(name, initial);
  }

  forward(x: Tensor): Tensor {
    if (!(x instanceof Tensor)) throw new Error(`${this.constructor.name}.forward: expected a Tensor, got ${describe(x)}`);
    return this.#layer.forward(x, this.training);
  }
}

markNativeForward(NativeModule.prototype.forward);
