// Datasets: `Dataset<T>`, the base class for user data (PyTorch's map-style
// `Dataset`), the `DatasetLike<T>` shape a DataLoader accepts, and `TensorDataset`,
// named tensors indexed along dim 0 whose batches are gathered in Rust.
import { native } from "../native.js";
import type { Tensor } from "../tensor.js";
import type { NativeTensorDataset } from "../../index.js";

/** What a DataLoader accepts: anything with a length and random access to samples. */
export interface DatasetLike<T> {
  readonly length: number;
  get(index: number): T;
}

/**
 * A map-style dataset to extend: implement `length` and `get(index)`.
 *
 * ```ts
 * class Squares extends data.Dataset<{ x: number; y: number }> {
 *   get length() { return 100; }
 *   get(i: number) { return { x: i, y: i * i }; }
 * }
 * ```
 */
export abstract class Dataset<T> implements DatasetLike<T> {
  abstract get length(): number;
  abstract get(index: number): T;

  /** Samples in index order. */
  *[Symbol.iterator](): Iterator<T> {
    for (let i = 0; i < this.length; i++) yield this.get(i);
  }
}

const natives = new WeakMap<TensorDataset<string>, NativeTensorDataset>();

/** The native dataset behind `dataset` (for the DataLoader). */
export function nativeDataset(dataset: TensorDataset<string>): NativeTensorDataset {
  const handle = natives.get(dataset);
  if (!handle) throw new Error("TensorDataset: not constructed by new TensorDataset(...)");
  return handle;
}

/**
 * Named tensors that share their size along dim 0: sample `i` is row `i` of
 * each. The tensors are shared, not copied. A DataLoader over it gathers each
 * batch by indexing the tensors once, on a background thread.
 */
export class TensorDataset<K extends string = string> extends Dataset<Record<K, Tensor>> {
  /** The names, in the order the tensors were given. */
  readonly keys: readonly K[];

  constructor(tensors: Record<K, Tensor>) {
    super();
    const keys = Object.keys(tensors) as K[];
    natives.set(this, new native.NativeTensorDataset(keys, keys.map((key) => tensors[key])));
    this.keys = keys;
  }

  override get length(): number {
    return nativeDataset(this).length;
  }

  /** Sample `index` (negative counts from the end): row `index` of each tensor, as views. */
  override get(index: number): Record<K, Tensor> {
    if (!Number.isInteger(index)) throw new Error(`get: index must be an integer, got ${index}`);
    const rows = nativeDataset(this).get(index);
    return Object.fromEntries(this.keys.map((key, i) => [key, rows[i]])) as Record<K, Tensor>;
  }
}
