// Checks the parameter lists given to optimizers and clipping, so a wrong argument
// fails with an Error naming the caller and the position instead of a bare TypeError.
import { Tensor } from "../tensor.js";

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return `an object (${value.constructor?.name ?? "no class"})`;
  return typeof value;
}

function isIterable(value: unknown): value is Iterable<unknown> {
  return value !== null && typeof value === "object" && Symbol.iterator in value;
}

/** `value` as an array of tensors: a single tensor, or an iterable of them. */
export function tensorList(op: string, what: string, value: unknown): Tensor[] {
  if (value instanceof Tensor) return [value];
  if (!isIterable(value)) throw new Error(`${op}: ${what} must be a Tensor or an array of Tensors, got ${describe(value)}`);
  const list = Array.from(value);
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new Error(`${op}: ${what}[${i}] is not a Tensor (got ${describe(t)})`);
  });
  return list as Tensor[];
}

export interface GroupInput {
  params: Tensor[];
  options: Record<string, unknown>;
}

/**
 * Splits optimizer `params` (tensors, or param groups `{ params, ...options }`) into groups.
 * An empty list gives no groups (the engine refuses it, as PyTorch does).
 */
export function paramGroups(op: string, params: unknown): GroupInput[] {
  if (!isIterable(params) || params instanceof Tensor) {
    throw new Error(`${op}: params must be an array of Tensors or of param groups, got ${describe(params)}`);
  }
  const items = Array.from(params);
  if (items.length === 0) return [];
  if (items[0] instanceof Tensor) return [{ params: tensorList(op, "params", items), options: {} }];
  return items.map((item, g) => {
    if (item instanceof Tensor) throw new Error(`${op}: params mixes Tensors and param groups (params[${g}] is a Tensor)`);
    if (item === null || typeof item !== "object" || !("params" in item)) {
      throw new Error(`${op}: params[${g}] is neither a Tensor nor a param group { params, ...options } (got ${describe(item)})`);
    }
    const { params: groupParams, ...options } = item as Record<string, unknown>;
    return { params: tensorList(op, `param group ${g}: params`, groupParams), options };
  });
}
