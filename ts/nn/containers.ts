// Containers: Sequential (a chain run in one native call when every part is native)
// and ModuleList (an indexable list of children, named "0", "1", ...).
import type { NativeLayer } from "../../index.js";
import { native } from "../native.js";
import { Tensor } from "../tensor.js";
import { Module } from "./module.js";
import { defineNativeLayer, nativeLayerOf, uniformlyTraining } from "./native_module.js";

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
    defineNativeLayer(this, () => this.#nativeChain());
  }

  /**
   * The native chain over the current children, rebuilt if they were replaced;
   * undefined if one is not native (or there are none: then forward returns its input).
   */
  #nativeChain(): NativeLayer | undefined {
    const layers: NativeLayer[] = [];
    for (const child of this.children()) {
      const layer = nativeLayerOf(child);
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

  /** Whether `forward` runs as one native call now (every child native, all in the same mode). */
  get runsNatively(): boolean {
    return this.#nativeChain() !== undefined && uniformlyTraining(this, this.training);
  }

  forward(x: Tensor): Tensor {
    const chain = this.#nativeChain();
    if (chain !== undefined && uniformlyTraining(this, this.training)) return chain.forward(x, this.training);
    return this.forwardInJs(x);
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
