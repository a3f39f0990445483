// Tensors for TypeScript: the native Tensor class, creation from JS data,
// conversion back to JS values, and deterministic disposal (`dispose`, `using`, `tidy`).
import { inspect } from "node:util";
import type * as Binding from "../index.js";
import type { TensorHandle } from "../index.js";
import { native } from "./native.js";

export type DType = "float32" | "float64" | "float16" | "bfloat16" | "int64" | "int32" | "bool" | "uint8";
/** Short aliases accepted wherever a dtype is: f32, f64, f16, bf16, i64, i32. */
export type DTypeLike = DType | "f32" | "f64" | "f16" | "bf16" | "i64" | "i32";
/** "cpu", "cuda" or "cuda:N". */
export type Device = string;
export type TypedArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;
export type NestedArray<T> = T | NestedArray<T>[];
export type TensorData = NestedArray<number> | NestedArray<boolean> | TypedArray;

export interface TensorOptions {
  dtype?: DTypeLike;
  device?: Device;
}

type Native = typeof Binding;
type Suffix<K, P extends string> = K extends `${P}${infer R}` ? Uncapitalize<R> : never;
type Rest<F> = F extends (tensor: Tensor, ...rest: infer A) => unknown ? A : never;
type Returned<F> = F extends (...args: never[]) => infer R ? R : never;
type Lift<R> = R extends TensorHandle ? Tensor : R;
/** The methods and getters installed from the native table (see crates/napi/src/tensor_ops.rs). */
type NativeMethods = { [K in keyof Native as Suffix<K, "tensorOp">]: (...args: Rest<Native[K]>) => Tensor } & {
  [K in keyof Native as Suffix<K, "tensorList">]: (...args: Rest<Native[K]>) => Tensor[];
} & { [K in keyof Native as Suffix<K, "tensorCall">]: (...args: Rest<Native[K]>) => Returned<Native[K]> } & {
  readonly [K in keyof Native as Suffix<K, "tensorGet">]: Lift<Returned<Native[K]>>;
};

/**
 * An n-dimensional array on a device, with autograd. Operations (`add`, `matmul`,
 * `sum`, `reshape`, ...) come from the native operation table; errors name the
 * operation and shapes. Free it with `dispose()`, `using`, or `tidy`.
 */
export class Tensor {
  /** @internal The native tensor's handle; operations pass it to the addon. */
  readonly _native: TensorHandle;

  constructor(handle: TensorHandle) {
    this._native = handle;
    if (young.push(this) === YOUNG_LIMIT) adoptYoung();
    else if (!adoptionQueued) {
      adoptionQueued = true;
      queueMicrotask(adoptQueued);
    }
  }

  /** Frees the tensor's memory now. Later calls on it throw. Idempotent. */
  dispose(): void {
    const handle = this._native;
    if (handle === DISPOSED) return;
    (this as { _native: TensorHandle })._native = DISPOSED;
    native.disposeTensor(handle);
  }

  get requiresGrad(): boolean {
    return native.tensorRequiresGrad(this);
  }

  set requiresGrad(value: boolean) {
    native.tensorSetRequiresGrad(this, value);
  }

  /** Same as `dispose()`, for `using t = ...`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A typed array of the elements in row-major order (float16/bfloat16 widen to Float32Array). */
  toTypedArray(): TypedArray {
    const dtype = this.dtype;
    if (dtype === "float16" || dtype === "bfloat16") {
      const wide = this.to("float32");
      try {
        return typedView(wide.toBytes(), "float32");
      } finally {
        wide.dispose();
      }
    }
    return typedView(this.toBytes(), dtype);
  }

  /** Nested JS arrays of numbers (booleans for bool tensors). */
  toArray(): NestedArray<number> | NestedArray<boolean> {
    const flat = this.toTypedArray();
    const values: ArrayLike<number | boolean> =
      flat instanceof BigInt64Array
        ? Array.from(flat, Number)
        : this.dtype === "bool"
          ? Array.from(flat as Uint8Array, (v) => v !== 0)
          : (flat as ArrayLike<number>);
    return nest(values, this.shape) as NestedArray<number> | NestedArray<boolean>;
  }

  toString(): string {
    if (this.isDisposed) return "Tensor(disposed)";
    const head = `shape=[${this.shape.join(", ")}], dtype=${this.dtype}, device=${this.device}`;
    return this.numel <= 64 ? `Tensor(${JSON.stringify(this.toArray())}, ${head})` : `Tensor(${head})`;
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

export interface Tensor extends NativeMethods {}

/**
 * Garbage collection. A tensor that is neither disposed nor freed by `tidy` is freed
 * when its JS object is collected: a FinalizationRegistry hands its handle back to the
 * addon, in batches. Registering costs about as much as a small operation, so new
 * tensors wait in `young` (at most YOUNG_LIMIT of them, and never past the current
 * job) and only those not disposed by then are registered. Most short-lived tensors
 * are disposed first and never pay for it.
 */
const YOUNG_LIMIT = 64;
const young: Tensor[] = [];
let adoptionQueued = false;
/** What a disposed `Tensor` holds instead of its handle; the addon reads it as disposed. */
const DISPOSED = 0xffff_ffff_ffff_ffffn as TensorHandle;
const releasable = new BigUint64Array(4096);
let releasableCount = 0;
const collected = new FinalizationRegistry<TensorHandle>((handle) => {
  if (releasableCount === 0) queueMicrotask(releaseCollected);
  releasable[releasableCount++] = handle;
  if (releasableCount === releasable.length) releaseCollected();
});

function adoptYoung(): void {
  for (const tensor of young) {
    if (tensor._native !== DISPOSED) collected.register(tensor, tensor._native);
  }
  young.length = 0;
}

function adoptQueued(): void {
  adoptionQueued = false;
  adoptYoung();
}

function releaseCollected(): void {
  const count = releasableCount;
  releasableCount = 0;
  if (count > 0) native.releaseTensors(releasable.subarray(0, count));
}

/** A tensor argument as the addon takes it fastest: its handle. */
const raw = (value: unknown): unknown => (value instanceof Tensor ? value._native : value);
const wrapHandle = (handle: TensorHandle | null): Tensor | null => (handle === null ? null : new Tensor(handle));

/** Errors from argument conversion do not know the operation; name it for them. */
function named(name: string, error: unknown): unknown {
  if (error instanceof Error && !error.message.startsWith(`${name}:`)) error.message = `${name}: ${error.message}`;
  return error;
}

/** Installs every native `tensorOp*`, `tensorList*`, `tensorCall*` and `tensorGet*` function on the prototype. */
function installNativeMethods(): void {
  const prototype = Tensor.prototype as unknown as Record<string, unknown>;
  const lower = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);
  for (const [key, value] of Object.entries(native)) {
    if (typeof value !== "function") continue;
    const fn = value as (...args: unknown[]) => unknown;
    const [, kind, rest] = /^tensor(Op|List|Call|Get)(.+)$/.exec(key) ?? [];
    if (!kind) continue;
    const name = lower(rest);
    if (kind === "Op") {
      prototype[name] = function (this: Tensor, a?: unknown, b?: unknown, c?: unknown, d?: unknown) {
        try {
          return new Tensor(fn(this._native, raw(a), raw(b), raw(c), raw(d)) as TensorHandle);
        } catch (error) {
          throw named(name, error);
        }
      };
    } else if (kind === "List") {
      prototype[name] = function (this: Tensor, a?: unknown, b?: unknown, c?: unknown) {
        try {
          return (fn(this._native, raw(a), raw(b), raw(c)) as TensorHandle[]).map((h) => new Tensor(h));
        } catch (error) {
          throw named(name, error);
        }
      };
    } else if (kind === "Call") {
      prototype[name] = function (this: Tensor, a?: unknown, b?: unknown, c?: unknown) {
        try {
          return fn(this._native, raw(a), raw(b), raw(c));
        } catch (error) {
          throw named(name, error);
        }
      };
    } else {
      const lifts = key === "tensorGetGrad";
      Object.defineProperty(prototype, name, {
        get(this: Tensor) {
          const result = fn(this._native);
          return lifts ? wrapHandle(result as TensorHandle | null) : result;
        },
        configurable: true,
      });
    }
  }
}

installNativeMethods();
native.registerTensorClass(Tensor);

function typedView(bytes: Buffer, dtype: string): TypedArray {
  const { buffer, byteOffset, byteLength } = bytes;
  switch (dtype) {
    case "float32":
      return new Float32Array(buffer, byteOffset, byteLength / 4);
    case "float64":
      return new Float64Array(buffer, byteOffset, byteLength / 8);
    case "int32":
      return new Int32Array(buffer, byteOffset, byteLength / 4);
    case "int64":
      return new BigInt64Array(buffer, byteOffset, byteLength / 8);
    default:
      return new Uint8Array(buffer, byteOffset, byteLength);
  }
}

function nest<T>(flat: ArrayLike<T>, shape: number[], offset = 0, dim = 0): NestedArray<T> {
  if (dim === shape.length) return flat[offset];
  const stride = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const out: NestedArray<T>[] = [];
  for (let i = 0; i < shape[dim]; i++) out.push(nest(flat, shape, offset + i * stride, dim + 1));
  return out;
}

const TYPED_DTYPE: [new (...args: never[]) => TypedArray, DType][] = [
  [Float32Array, "float32"],
  [Float64Array, "float64"],
  [Int32Array, "int32"],
  [BigInt64Array, "int64"],
  [Uint8Array, "uint8"],
];

function shapeOf(data: NestedArray<number | boolean>): number[] {
  const shape: number[] = [];
  let level: NestedArray<number | boolean> = data;
  while (Array.isArray(level)) {
    shape.push(level.length);
    level = level[0];
  }
  return shape;
}

function flatten(data: NestedArray<number | boolean>, shape: number[]): (number | boolean)[] {
  const out: (number | boolean)[] = [];
  const walk = (node: NestedArray<number | boolean>, dim: number, path: string) => {
    if (dim === shape.length) {
      if (Array.isArray(node)) throw new Error(`tensor: ragged nested array: ${path} has more dimensions than [0]`);
      out.push(node);
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[dim]) {
      throw new Error(`tensor: ragged nested array: ${path} should have length ${shape[dim]} like its first sibling`);
    }
    node.forEach((child, i) => walk(child, dim + 1, `${path}[${i}]`));
  };
  walk(data, 0, "data");
  return out;
}

/**
 * A tensor from nested arrays, a number, or a typed array (shape defaults to
 * its length; pass `shape` to reshape). Integers give int64, other numbers
 * float32, booleans bool, typed arrays their own dtype, unless `dtype` says otherwise.
 */
export function tensor(data: TensorData, options: TensorOptions & { shape?: number[] } = {}): Tensor {
  const { dtype, device } = options;
  if (ArrayBuffer.isView(data)) {
    const match = TYPED_DTYPE.find(([ctor]) => data instanceof ctor);
    if (!match) throw new Error(`tensor: unsupported typed array ${data.constructor.name}`);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return native.fromBytes(bytes, options.shape ?? [data.length], match[1], dtype, device);
  }
  const shape = shapeOf(data);
  const flat = flatten(data, shape);
  if (flat.length > 0 && typeof flat[0] === "boolean") {
    const bytes = Uint8Array.from(flat, (v) => (v ? 1 : 0));
    return native.fromBytes(bytes, options.shape ?? shape, "bool", dtype, device);
  }
  const values = Float64Array.from(flat as number[]);
  const inferred = values.every(Number.isInteger) ? "int64" : "float32";
  const bytes = new Uint8Array(values.buffer);
  return native.fromBytes(bytes, options.shape ?? shape, "float64", dtype ?? inferred, device);
}

export function zeros(shape: number[], options: TensorOptions = {}): Tensor {
  return native.zeros(shape, options.dtype, options.device);
}

export function ones(shape: number[], options: TensorOptions = {}): Tensor {
  return native.ones(shape, options.dtype, options.device);
}

export function full(shape: number[], value: number, options: TensorOptions = {}): Tensor {
  return native.full(shape, value, options.dtype, options.device);
}

/** `arange(end)` or `arange(start, end, step)`. */
export function arange(start: number, end?: number, step = 1, options: TensorOptions = {}): Tensor {
  return end === undefined
    ? native.arange(0, start, step, options.dtype, options.device)
    : native.arange(start, end, step, options.dtype, options.device);
}

export function randn(shape: number[], options: TensorOptions = {}): Tensor {
  return native.randn(shape, options.dtype, options.device);
}

export function rand(shape: number[], options: TensorOptions = {}): Tensor {
  return native.rand(shape, options.dtype, options.device);
}

export function randint(low: number, high: number, shape: number[], options: TensorOptions = {}): Tensor {
  return native.randint(low, high, shape, options.dtype, options.device);
}

export function manualSeed(seed: number): void {
  native.manualSeed(seed);
}

export const cat = native.cat;
export const stack = native.stack;
export const where = native.where;

/** Whether operations record gradients now (false inside `noGrad`). */
export function isGradEnabled(): boolean {
  return native.isGradEnabled();
}

/** Runs `fn` without recording gradients. */
export function noGrad<T>(fn: () => T): T {
  const previous = native.setGradEnabled(false);
  try {
    return fn();
  } finally {
    native.setGradEnabled(previous);
  }
}

function collectTensors(value: unknown, into: Tensor[], seen = new Set<unknown>()): Tensor[] {
  if (value instanceof Tensor) {
    into.push(value);
  } else if (value !== null && typeof value === "object" && !seen.has(value)) {
    seen.add(value);
    const children = value instanceof Map ? value.values() : Array.isArray(value) ? value : Object.values(value);
    for (const child of children) collectTensors(child, into, seen);
  }
  return into;
}

/**
 * Runs `fn` and frees every tensor created inside it that it does not return
 * (tensors found in the returned value, arrays, Maps and plain objects, are kept).
 */
export function tidy<T>(fn: () => T): T {
  native.beginScope();
  let result: T;
  try {
    result = fn();
  } catch (error) {
    native.endScope([]);
    throw error;
  }
  if (result instanceof Promise) {
    native.endScope([]);
    throw new Error("tidy: the function returned a Promise; tidy only tracks synchronous code");
  }
  native.endScope(collectTensors(result, []));
  return result;
}

/** How many tensors are alive (created and neither disposed nor garbage-collected). */
export function liveTensors(): number {
  return native.liveTensors();
}
