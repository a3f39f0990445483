// Collective operations across the processes of a run, for tensors (nested in
// arrays and records too) and JSON values. On one process each returns its input.
import { native } from "./native.js";
import { cat, full, tensor, tidy, Tensor, type DType } from "./tensor.js";

/** Tensors, possibly nested in arrays and plain records. */
export type TensorTree = Tensor | TensorTree[] | { [key: string]: TensorTree };

const distributed = (): boolean => native.distIsInitialized();

function mapTree(tree: TensorTree, op: string, f: (t: Tensor) => Tensor): TensorTree {
  if (tree instanceof Tensor) return f(tree);
  if (Array.isArray(tree)) return tree.map((t) => mapTree(t, op, f));
  if (tree !== null && typeof tree === "object") {
    return Object.fromEntries(Object.entries(tree).map(([k, v]) => [k, mapTree(v, op, f)]));
  }
  throw new TypeError(`${op}: expected tensors (possibly nested in arrays or records), got ${typeof tree}`);
}

/** Every process's tensors concatenated along dim 0, in rank order (0-d tensors become 1-d). */
export function gather<T extends TensorTree>(tree: T): T {
  return mapTree(tree, "gather", (t) => (distributed() ? native.distAllGather(t) : t)) as T;
}

/** A new tensor reduced across processes ("sum", "mean", "max" or "min") on every process. */
export function reduce<T extends TensorTree>(tree: T, reduction: "sum" | "mean" | "max" | "min" = "sum"): T {
  if (!["sum", "mean", "max", "min"].includes(reduction)) {
    throw new Error(`reduce: reduction must be "sum", "mean", "max" or "min", got "${reduction}"`);
  }
  return mapTree(tree, "reduce", (t) => (distributed() ? native.distAllReduce(t, reduction) : t.detach().contiguous())) as T;
}

export interface PadOptions {
  dim?: number;
  padIndex?: number;
  padFirst?: boolean;
}

/** Pads `dim` to the largest size across processes with `padIndex`, so the tensors can be gathered. */
export function padAcrossProcesses<T extends TensorTree>(tree: T, options: PadOptions = {}): T {
  const { dim = 0, padIndex = 0, padFirst = false } = options;
  return mapTree(tree, "padAcrossProcesses", (t) => {
    if (!distributed() || dim >= t.ndim || dim < -t.ndim) return t;
    const axis = dim < 0 ? dim + t.ndim : dim;
    const size = t.shape[axis];
    const largest = tidy(() => native.distAllReduce(tensor([size]), "max").item());
    if (size === largest) return t;
    const padShape = t.shape.map((s, i) => (i === axis ? largest - size : s));
    return tidy(() => {
      const pad = full(padShape, padIndex, { dtype: t.dtype as DType, device: t.device });
      return cat(padFirst ? [pad, t] : [t, pad], axis);
    });
  }) as T;
}

/** Overwrites `t` on every process with process `from`'s values; returns `t`. */
export function broadcast(t: Tensor, from = 0): Tensor {
  if (distributed()) native.distBroadcast(t, from);
  return t;
}

/** Every process's JSON value, one entry per process, in rank order. */
function allGatherJson<T>(value: T): T[] {
  if (!distributed()) return [value];
  const parts = native.distAllGatherBytes(Buffer.from(JSON.stringify(value) ?? "null"));
  return parts.map((b) => JSON.parse(b.toString("utf8")) as T);
}

/**
 * Every process's JSON value in rank order. Arrays are concatenated, as HF's
 * `gather_object` flattens one level: `gatherObject([rank])` is `[0, 1]` on 2 processes.
 * Any other value gives one entry per process (HF would iterate it).
 */
export function gatherObject<T>(value: readonly T[]): T[];
export function gatherObject<T>(value: T): T[];
export function gatherObject<T>(value: T | readonly T[]): T[] {
  const all = allGatherJson(value);
  return Array.isArray(value) ? (all as T[][]).flat(1) : (all as T[]);
}

/** Process `from`'s JSON value, on every process. */
export function broadcastObject<T>(value: T, from = 0): T {
  const all = allGatherJson(value);
  if (!Number.isInteger(from) || from < 0 || from >= all.length) {
    throw new Error(`broadcastObject: from must be a process index below ${all.length}, got ${from}`);
  }
  return all[from];
}

/** Waits until every process reaches this point. */
export function waitForEveryone(): void {
  if (distributed()) native.distBarrier();
}
