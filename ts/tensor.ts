// Tensors for TypeScript: the native Tensor class, creation from JS data,
// conversion back to JS values, and deterministic disposal (`dispose`, `using`, `tidy`).
import { inspect } from "node:util";
import type * as Binding from "../index.js";
import type { TensorHandle } from "../index.js";
import { checkOptionNames, describe, optionNames } from "./errors.js";
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
const TENSOR_OPTIONS = optionNames<TensorOptions>()(["dtype", "device"]);
const TENSOR_DATA_OPTIONS = optionNames<TensorOptions & { shape?: number[] }>()(["dtype", "device", "shape"]);

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
  /** @internal Set by `keep()`: no scope frees this tensor. */
  _kept = false;
  /** @internal Set for a built-in layer's parameter ("Linear.weight"), which its layer shares: never disposed by hand. */
  _parameterOf: string | undefined = undefined;

  /**
   * Tensors are made by operations (`tensor()`, `zeros()`, `x.add(y)`, ...): a handle
   * cannot be wrapped by hand, so no JS value can alias another tensor.
   */
  constructor(handle: TensorHandle, token?: typeof CONSTRUCT) {
    if (token !== CONSTRUCT) {
      throw new TypeError("Tensor: tensors are made by operations such as tensor(), zeros() or x.add(y), not by new Tensor()");
    }
    this._native = handle;
    const scope = scopes[scopes.length - 1];
    if (scope !== undefined) scope.tensors.push(this);
    else toGarbageCollector(this);
  }

  /** Frees the tensor's memory now. Later calls on it throw. Idempotent. A layer's parameter cannot be disposed. */
  dispose(): void {
    const handle = this._native;
    if (handle >= FREED) return;
    if (this._parameterOf !== undefined) {
      throw new Error(`dispose: this tensor is the parameter ${this._parameterOf}, which lives as long as its layer; detach() or clone() it for a tensor of your own`);
    }
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

/** Passed by this module to the constructor: only its own code wraps handles. */
const CONSTRUCT = Symbol("Tensor.construct");
const wrap = (handle: TensorHandle): Tensor => new Tensor(handle, CONSTRUCT);

/**
 * Handles of freed tensors (crates/napi/src/tensor.rs reads them): generation 2^32-1,
 * which no live slot has, and an index saying what freed the tensor, so that a later
 * use names it. Every handle at or above FREED is one.
 */
const FREED = 0xffff_ffff_0000_0000n;
const DISPOSED = 0xffff_ffff_ffff_ffffn as TensorHandle;
const FREED_BY_TIDY = 0xffff_ffff_ffff_fffen as TensorHandle;
const LAST_STEP_MARK = 0xffff_fffd;
const freedByStep = (step: number): TensorHandle => (FREED | BigInt(Math.min(step, LAST_STEP_MARK))) as TensorHandle;

/**
 * Scopes. While one is open, every new tensor belongs to the innermost one and is freed
 * when it closes, unless kept (`keep()`) or handed on (a `tidy` passes the tensors its
 * function returns to the enclosing scope). `tidy` opens one around its function; a
 * prepared DataLoader opens one per step (see ts/data/loader.ts). Nothing here waits
 * for the garbage collector, which never runs finalizers inside a synchronous loop.
 */
export interface Scope {
  readonly tensors: Tensor[];
}
const scopes: Scope[] = [];

/** Opens a scope; close it with `closeScope`. */
export function openScope(): Scope {
  const scope: Scope = { tensors: [] };
  scopes.push(scope);
  return scope;
}

/**
 * Closes `scope`: frees its tensors but the kept ones and those in `handOn`, which move
 * to the enclosing scope (or to the garbage collector when there is none). `step` says
 * which step of a loader ended, for the error a later use of a freed tensor gives.
 */
export function closeScope(scope: Scope, options: { step?: number; handOn?: ReadonlySet<Tensor> } = {}): void {
  const at = scopes.lastIndexOf(scope);
  if (at < 0) return;
  scopes.splice(at, 1);
  const outer = at > 0 ? scopes[at - 1] : undefined;
  const marker = options.step === undefined ? FREED_BY_TIDY : freedByStep(options.step);
  let count = 0;
  for (const tensor of scope.tensors) {
    const handle = tensor._native;
    if (handle >= FREED) continue;
    if (tensor._kept || options.handOn?.has(tensor)) {
      if (outer !== undefined && !tensor._kept) outer.tensors.push(tensor);
      else toGarbageCollector(tensor);
      continue;
    }
    (tensor as { _native: TensorHandle })._native = marker;
    releasable[count++] = handle;
    if (count === releasable.length) {
      native.releaseTensors(releasable);
      count = 0;
    }
  }
  if (count > 0) native.releaseTensors(releasable.subarray(0, count));
  scope.tensors.length = 0;
}

/**
 * Exempts tensors from every scope: a tensor made inside a `tidy` or a prepared loader's
 * step that you use later (a running sum, a list read after the loop, a best-model copy).
 * A kept tensor is freed by `dispose()` or, failing that, by the garbage collector.
 * Returns its argument. Parameters, buffers and anything a Module holds are kept already.
 */
export function keep<T extends Tensor | readonly Tensor[]>(tensors: T): T {
  const list: readonly unknown[] = tensors instanceof Tensor ? [tensors] : Array.isArray(tensors) ? tensors : [tensors];
  for (const tensor of list) {
    if (!(tensor instanceof Tensor)) throw new Error(`keep: expected a Tensor or an array of Tensors, got ${describe(tensor)}`);
  }
  for (const tensor of list as readonly Tensor[]) tensor._kept = true;
  return tensors;
}

/**
 * Garbage collection, for tensors outside any scope (and kept ones). A tensor that is
 * never disposed is freed after its JS object is collected: the addon holds a weak
 * reference to it and frees the slots of collected objects as it goes, during a
 * synchronous loop too (crates/napi/src/tensor.rs, `watchTensors`). Watching costs about
 * as much as a small operation, so such tensors wait in `young` (at most YOUNG_LIMIT of
 * them, and never past the current job) and only those not freed by then are watched.
 */
const YOUNG_LIMIT = 64;
const young: Tensor[] = [];
let adoptionQueued = false;
const releasable = new BigUint64Array(4096);

function toGarbageCollector(tensor: Tensor): void {
  if (young.push(tensor) === YOUNG_LIMIT) adoptYoung();
  else if (!adoptionQueued) {
    adoptionQueued = true;
    queueMicrotask(adoptQueued);
  }
}

function adoptYoung(): void {
  const alive = young.filter((tensor) => tensor._native < FREED);
  young.length = 0;
  if (alive.length > 0) native.watchTensors(alive);
}

function adoptQueued(): void {
  adoptionQueued = false;
  adoptYoung();
}

/**
 * An argument as the addon takes it fastest: a Tensor's handle; other values as they are,
 * except a BigInt, which the addon would read as a handle.
 */
const raw = (value: unknown): unknown => {
  if (value instanceof Tensor) return value._native;
  if (typeof value === "bigint") throw new TypeError(`expected a Tensor or a number, got the BigInt ${value}`);
  return value;
};
const wrapHandle = (handle: TensorHandle | null): Tensor | null => (handle === null ? null : wrap(handle));

/** Errors from argument conversion do not know the operation; name it for them. */
function named(name: string, error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  const message = error.message.startsWith(`${name}:`) ? error.message : `${name}: ${error.message}`;
  // The addon reports a value that is not a tensor where one is expected as an invalid argument.
  if ((error as { code?: unknown }).code === "InvalidArg" && !(error instanceof TypeError)) return new TypeError(message);
  error.message = message;
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
          return wrap(fn(this._native, raw(a), raw(b), raw(c), raw(d)) as TensorHandle);
        } catch (error) {
          throw named(name, error);
        }
      };
    } else if (kind === "List") {
      prototype[name] = function (this: Tensor, a?: unknown, b?: unknown, c?: unknown) {
        try {
          return (fn(this._native, raw(a), raw(b), raw(c)) as TensorHandle[]).map(wrap);
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
          try {
            const result = fn(this._native);
            return lifts ? wrapHandle(result as TensorHandle | null) : result;
          } catch (error) {
            throw named(name, error);
          }
        },
        configurable: true,
      });
    }
  }
}

installNativeMethods();
native.registerTensorClass(Tensor, wrap);

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
      if (typeof node !== "number" && typeof node !== "boolean") {
        throw new TypeError(`tensor: ${path} is ${node === null ? "null" : `a ${typeof node}`}; tensor data holds numbers or booleans`);
      }
      if (out.length > 0 && typeof node !== typeof out[0]) throw new TypeError(`tensor: ${path} mixes numbers and booleans`);
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
  checkOptionNames("tensor", options, TENSOR_DATA_OPTIONS);
  const { dtype, device } = options;
  if (ArrayBuffer.isView(data)) {
    const match = TYPED_DTYPE.find(([ctor]) => data instanceof ctor);
    if (!match) throw new Error(`tensor: unsupported typed array ${data.constructor.name}`);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return namedCall("tensor", () => native.fromBytes(bytes, options.shape ?? [data.length], match[1], dtype, device));
  }
  const shape = shapeOf(data);
  const flat = flatten(data, shape);
  if (flat.length > 0 && typeof flat[0] === "boolean") {
    const bytes = Uint8Array.from(flat, (v) => (v ? 1 : 0));
    return namedCall("tensor", () => native.fromBytes(bytes, options.shape ?? shape, "bool", dtype, device));
  }
  const values = Float64Array.from(flat as number[]);
  const inferred = values.every(Number.isInteger) ? "int64" : "float32";
  const bytes = new Uint8Array(values.buffer);
  return namedCall("tensor", () => native.fromBytes(bytes, options.shape ?? shape, "float64", dtype ?? inferred, device));
}

/** Runs a free function's native call so that a conversion error names the operation, as methods do. */
function namedCall<T>(name: string, call: () => T): T {
  try {
    return call();
  } catch (error) {
    throw named(name, error);
  }
}

export function zeros(shape: number[], options: TensorOptions = {}): Tensor {
  checkOptionNames("zeros", options, TENSOR_OPTIONS);
  return namedCall("zeros", () => native.zeros(shape, options.dtype, options.device));
}

export function ones(shape: number[], options: TensorOptions = {}): Tensor {
  checkOptionNames("ones", options, TENSOR_OPTIONS);
  return namedCall("ones", () => native.ones(shape, options.dtype, options.device));
}

export function full(shape: number[], value: number, options: TensorOptions = {}): Tensor {
  checkOptionNames("full", options, TENSOR_OPTIONS);
  return namedCall("full", () => native.full(shape, value, options.dtype, options.device));
}

/** `arange(end)` or `arange(start, end, step)`. */
export function arange(start: number, end?: number, step = 1, options: TensorOptions = {}): Tensor {
  checkOptionNames("arange", options, TENSOR_OPTIONS);
  return namedCall("arange", () =>
    end === undefined
      ? native.arange(0, start, step, options.dtype, options.device)
      : native.arange(start, end, step, options.dtype, options.device),
  );
}

export function randn(shape: number[], options: TensorOptions = {}): Tensor {
  checkOptionNames("randn", options, TENSOR_OPTIONS);
  return namedCall("randn", () => native.randn(shape, options.dtype, options.device));
}

export function rand(shape: number[], options: TensorOptions = {}): Tensor {
  checkOptionNames("rand", options, TENSOR_OPTIONS);
  return namedCall("rand", () => native.rand(shape, options.dtype, options.device));
}

export function randint(low: number, high: number, shape: number[], options: TensorOptions = {}): Tensor {
  checkOptionNames("randint", options, TENSOR_OPTIONS);
  return namedCall("randint", () => native.randint(low, high, shape, options.dtype, options.device));
}

export function manualSeed(seed: number): void {
  namedCall("manualSeed", () => native.manualSeed(seed));
}

export const cat = (tensors: Tensor[], dim?: number): Tensor => namedCall("cat", () => native.cat(tensors, dim));
export const stack = (tensors: Tensor[], dim?: number): Tensor => namedCall("stack", () => native.stack(tensors, dim));

/** Elements of `a` where `condition` is true, else of `b` (a tensor or a number). */
export function where(condition: Tensor, a: Tensor, b: Tensor | number): Tensor {
  return namedCall("where", () => native.where(condition, a, raw(b) as Tensor | number));
}

/** Whether operations record gradients now (false inside `noGrad`). */
export function isGradEnabled(): boolean {
  return native.isGradEnabled();
}

/** Runs `fn` without recording gradients. */
export function noGrad<T>(fn: () => T): T {
  if (typeof fn !== "function") throw new Error(`noGrad: expected a function, got ${describe(fn)}`);
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
 * (tensors found in the returned value, arrays, Maps and plain objects, are kept) or `keep()`.
 */
export function tidy<T>(fn: () => T): T {
  if (typeof fn !== "function") throw new Error(`tidy: expected a function, got ${describe(fn)}`);
  const scope = openScope();
  let result: T;
  try {
    result = fn();
  } catch (error) {
    closeScope(scope);
    throw error;
  }
  if (result instanceof Promise) {
    closeScope(scope);
    throw new Error("tidy: the function returned a Promise; tidy only tracks synchronous code");
  }
  closeScope(scope, { handOn: new Set(collectTensors(result, [])) });
  return result;
}

/** How many tensors are alive (created and neither disposed nor garbage-collected; collected ones are freed first). */
export function liveTensors(): number {
  return native.liveTensors();
}
