// Containers: Sequential (a chain run in one native call when every part is native)
// and ModuleList (an indexable list of children, named "0", "1", ...).
import type { NativeLayer } from "../../index.js";
import { native } from "../native.js";
import { Tensor } from "../tensor.js";
import { Module } from "./module.js";
import { defineNativeLayer, markNativeForward, nativeLayerOf } from "./native_module.js";

abstract class IndexedModules<T extends Module> extends Module implements Iterable<T> {
  constructor(modules: T[]) {
    super();
    modules.forEach((module, i) => {
      if (!(module instanceof Module)) throw new Error(`${new.target.name}: item ${i} is not a Module`);
      this.registerModule(String(i), module);
    });
  }

  get length(): number {
    return this.children().length;
  }

  /** The `index`-th child; negative counts from the end. */
  at(index: number): T | undefined {
    return this.children().at(index) as T | undefined;
  }

  [Symbol.iterator](): Iterator<T> {
    return (this.children() as T[])[Symbol.iterator]();
  }
}

/**
 * Runs its children in order, each on the previous one's output. When every child
 * runs in the engine (Linear, ReLU, nested Sequential, ...) the whole chain is one
 * native call; otherwise (a child written in TS) it loops in JS.
 */
export class Sequential extends IndexedModules<Module> {
  #layers: NativeLayer[] = [];
  #chain: NativeLayer | undefined;

  constructor(...modules: Module[]) {
    super(modules);
    defineNativeLayer(this, () => this.#nativeChain(this.training));
  }

  /**
   * The native chain over the current children if each runs natively in `mode`
   * (rebuilt when children were replaced); undefined otherwise, or when there are
   * no children (forward then returns its input). Only native modules' own modes
   * matter: the inner layers of a native module ignore theirs.
   */
  #nativeChain(mode: boolean): NativeLayer | undefined {
    const layers: NativeLayer[] = [];
    for (const child of this.children()) {
      if (child.training !== mode) return undefined;
      const layer = child instanceof Sequential ? child.#nativeChain(mode) : nativeLayerOf(child);
      if (layer === undefined) return undefined;
      layers.push(layer);
    }
    if (layers.length === 0) return undefined;
    if (this.#chain === undefined || layers.length !== this.#layers.length || layers.some((l, i) => l !== this.#layers[i])) {
      this.#layers = layers;
      this.#chain = native.NativeLayer.sequential(layers);
    }
    return this.#chain;
  }

  /** Whether `forward` runs as one native call now (every child native, all in this module's mode). */
  get runsNatively(): boolean {
    return this.#nativeChain(this.training) !== undefined;
  }

  forward(x: Tensor): Tensor {
    const chain = this.#nativeChain(this.training);
    return chain === undefined ? this.forwardInJs(x) : chain.forward(x, this.training);
  }

  /** The same computation as a JS loop over the children's `forward` (what runs when a child is a TS module). */
  forwardInJs(x: Tensor): Tensor {
    let h: unknown = x;
    for (const [name, child] of this.namedChildren()) {
      h = child.forward(h);
      if (!(h instanceof Tensor)) throw new Error(`Sequential: child "${name}" returned ${typeof h}, not a Tensor`);
    }
    return h as Tensor;
  }
}

markNativeForward(Sequential.prototype.forward);

/** Holds modules in a list (e.g. transformer blocks); children are named "0", "1", ... */
export class ModuleList<T extends Module = Module> extends IndexedModules<T> {
  constructor(modules: Iterable<T> = []) {
    super([...modules]);
  }

  /** Appends `module` as the next child. */
  push(module: T): this {
    this.registerModule(String(this.length), module);
    return this;
  }

  forward(): never {
    throw new Error("ModuleList has no forward(); call its children's forward in your own module");
  }
}
