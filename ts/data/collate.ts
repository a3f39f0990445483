// Turning a list of samples into one batch: the default collate (tensors and
// numbers stacked into batch tensors, by key or by position), and device moves.
import { Tensor, stack, tensor, type Device } from "../tensor.js";

/** The batch the default collate makes from samples of type `T`. */
export type Collated<T> = T extends Tensor
  ? Tensor
  : T extends number | boolean
    ? Tensor
    : T extends string
      ? string[]
      : T extends readonly unknown[]
        ? { -readonly [I in keyof T]: Collated<T[I]> }
        : T extends object
          ? { -readonly [K in keyof T]: Collated<T[K]> }
          : never;

function kindOf(value: unknown): string {
  if (value instanceof Tensor) return "Tensor";
  if (Array.isArray(value)) return "array";
  if (value === null) return "null";
  return typeof value;
}

function collateAt(samples: unknown[], path: string): unknown {
  const first = samples[0];
  const kind = kindOf(first);
  samples.forEach((sample, i) => {
    if (kindOf(sample) !== kind) {
      throw new Error(`collate: ${path.replace("*", `[${i}]`)} is ${kindOf(sample)} but sample 0 has ${kind} there`);
    }
  });
  switch (kind) {
    case "Tensor":
      return stack(samples as Tensor[]);
    case "number":
      return tensor(samples as number[]);
    case "boolean":
      return tensor(samples as boolean[]);
    case "string":
      return [...(samples as string[])];
    case "array": {
      const length = (first as unknown[]).length;
      samples.forEach((sample, i) => {
        if ((sample as unknown[]).length !== length) {
          throw new Error(
            `collate: ${path.replace("*", `[${i}]`)} has ${(sample as unknown[]).length} elements but sample 0 has ${length}`,
          );
        }
      });
      return Array.from({ length }, (_, j) => collateAt(samples.map((s) => (s as unknown[])[j]), `${path}[${j}]`));
    }
    case "object": {
      const keys = Object.keys(first as object);
      return Object.fromEntries(
        keys.map((key) => {
          const values = samples.map((sample, i) => {
            if (!(key in (sample as object))) throw new Error(`collate: ${path.replace("*", `[${i}]`)} has no key "${key}"`);
            return (sample as Record<string, unknown>)[key];
          });
          return [key, collateAt(values, `${path}.${key}`)];
        }),
      );
    }
    default:
      throw new Error(`collate: cannot batch ${kind} values (at ${path.replace("*", "[0]")}); pass a collate function`);
  }
}

/**
 * Stacks samples into a batch: Tensors with `stack`; numbers into a tensor
 * (int64 when all are integers, else float32, as `tensor()` infers); booleans
 * into a bool tensor; strings into a string array; arrays position by position
 * and objects key by key, recursively (PyTorch's `default_collate`).
 */
export function defaultCollate<T>(samples: readonly T[]): Collated<T> {
  if (samples.length === 0) throw new Error("collate: no samples to batch");
  return collateAt([...samples], "samples*") as Collated<T>;
}

/** `batch` with every tensor in it moved to `device`; `disposeMoved` frees the originals that moved. */
export function toDevice<B>(batch: B, device: Device, disposeMoved: boolean): B {
  if (batch instanceof Tensor) {
    const moved = batch.to(undefined, device);
    if (disposeMoved) batch.dispose();
    return moved as B;
  }
  if (Array.isArray(batch)) return batch.map((item: unknown) => toDevice(item, device, disposeMoved)) as B;
  if (batch !== null && typeof batch === "object" && Object.getPrototypeOf(batch) === Object.prototype) {
    return Object.fromEntries(
      Object.entries(batch).map(([key, value]) => [key, toDevice(value, device, disposeMoved)]),
    ) as B;
  }
  return batch;
}

/** Frees every tensor in `batch` (tensors, arrays and plain objects of them). */
export function disposeTensors(batch: unknown): void {
  if (batch instanceof Tensor) batch.dispose();
  else if (Array.isArray(batch)) batch.forEach(disposeTensors);
  else if (batch !== null && typeof batch === "object" && Object.getPrototypeOf(batch) === Object.prototype) {
    Object.values(batch).forEach(disposeTensors);
  }
}
