// The precision policy the Accelerator delegates to: autocast for "fp16"/"bf16"/"fp8" around
// model forwards and explicit blocks (with Linear layers in fp8 for "fp8"), and dynamic loss
// scaling for "fp16" (torch.amp.GradScaler). Parameters are never converted: master weights
// and optimizer state stay float32.
import type { GradScalerCore } from "../index.js";
import { mixedPrecisionOf, type MixedPrecision } from "./mixed-precision.js";
import { native } from "./native.js";
import { nativeForwardFloat32 } from "./nn/native_module.js";
import { Tensor } from "./tensor.js";

export type PrecisionMode = MixedPrecision;

/** torch.amp.GradScaler's arguments (HF's GradScalerKwargs), with the same defaults. */
export interface GradScalerOptions {
  /** Default 65536 (2^16). */
  initScale?: number;
  /** The scale is multiplied by this after `growthInterval` clean steps in a row (default 2). */
  growthFactor?: number;
  /** ... and by this after a step with inf/NaN gradients, which is skipped (default 0.5). */
  backoffFactor?: number;
  /** Default 2000. */
  growthInterval?: number;
  /** Default true; a disabled scaler leaves losses and gradients alone. */
  enabled?: boolean;
}

/** The scaler's checkpoint state (torch's GradScaler.state_dict(), camelCased). */
export interface GradScalerStateDict {
  scale: number;
  growthFactor: number;
  backoffFactor: number;
  growthInterval: number;
  /** Clean steps in a row since the scale last changed. */
  growthTracker: number;
}

const AUTOCAST_DTYPE = { fp16: "float16", bf16: "bfloat16", fp8: "bfloat16" } as const;

/** fp8 GEMMs need compute capability 8.9 (Ada, Hopper and newer); on the CPU they are emulated. */
function checkFp8Device(device: string): void {
  if (device === "cpu") return;
  const index = Number(device.slice("cuda:".length)) || 0;
  const { name, capability } = native.cudaDeviceInfo(index);
  const [major, minor] = capability;
  if (major * 10 + minor < 89) {
    throw new Error(
      `PrecisionPolicy: mixedPrecision "fp8" needs a GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); ${device} (${name}) is ${major}.${minor}: use "bf16"`,
    );
  }
}

function deviceType(device: string): "cpu" | "cuda" {
  if (device === "cpu") return "cpu";
  if (/^cuda(:\d+)?$/.test(device)) return "cuda";
  throw new Error(`PrecisionPolicy: mixed precision covers "cpu" and "cuda[:N]" devices, got "${device}"`);
}

/** Half-precision tensors in `value` (also inside arrays and plain records) as float32. */
function toFloat32(value: unknown): unknown {
  if (value instanceof Tensor) {
    // The half-precision original is left to its owner (tidy or GC): it may be a tensor the
    // model keeps, and the float32 copy's autograd graph does not need it.
    return value.dtype === "float16" || value.dtype === "bfloat16" ? value.to("float32") : value;
  }
  if (Array.isArray(value)) return value.map(toFloat32);
  if (value !== null && typeof value === "object" && [Object.prototype, null].includes(Object.getPrototypeOf(value))) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toFloat32(v)]));
  }
  return value;
}

/**
 * How one Accelerator runs in mixed precision: "no" (float32), "bf16" (autocast to bfloat16,
 * no scaling), "fp16" (autocast to float16 and dynamic loss scaling) or "fp8" (autocast to
 * bfloat16, and Linear layers whose matmul dimensions are multiples of 16 multiply in fp8 with
 * dynamic per-tensor scales; on the CPU the fp8 matmuls are emulated, for tests).
 *
 * Unlike Hugging Face Accelerate, which applies neither autocast nor a scaler for "fp16" on a
 * CPU device, this policy applies both on the CPU too (libtorch's CPU autocast supports float16),
 * so fp16 training behaves the same on every device and can be tested without a GPU.
 */
export class PrecisionPolicy {
  readonly mode: PrecisionMode;
  readonly device: string;
  readonly #deviceType: "cpu" | "cuda";
  readonly #scaler: GradScalerCore | null;
  readonly #wrapped = new WeakSet<object>();
  #stepWasSkipped = false;

  constructor(mode: PrecisionMode, device: string, scaler: GradScalerOptions = {}) {
    this.mode = mixedPrecisionOf("PrecisionPolicy", mode);
    this.device = device;
    this.#deviceType = deviceType(device);
    if (mode === "fp8") checkFp8Device(device);
    this.#scaler = mode === "fp16" ? new native.GradScalerCore(scaler) : null;
  }

  /** The loss scale (fp16 with an enabled scaler), else null. */
  get scale(): number | null {
    return this.#scaler?.getScale() ?? null;
  }

  /** Whether the last `step` skipped the optimizer because of inf/NaN gradients. */
  get stepWasSkipped(): boolean {
    return this.#stepWasSkipped;
  }

  /** Runs `fn` under autocast in this policy's dtype on its device type; just runs it for "no". */
  autocast<R>(fn: () => R): R {
    if (this.mode === "no") return fn();
    const token = native.autocastEnter(this.#deviceType, AUTOCAST_DTYPE[this.mode], true, this.mode === "fp8");
    let result: R;
    try {
      result = fn();
    } finally {
      native.autocastExit(token);
    }
    if (result instanceof Promise) {
      throw new Error("autocast: the function returned a Promise; autocast covers synchronous code only");
    }
    return result;
  }

  /**
   * Makes `model.forward` run under autocast and return its floating outputs (tensors, or
   * arrays/records of them) as float32, so that losses computed outside run in float32.
   */
  wrapModel(model: { forward(...args: never[]): unknown }): void {
    if (this.mode === "no" || this.#wrapped.has(model)) return;
    const original = model.forward;
    const forward = original.bind(model) as (...args: unknown[]) => unknown;
    model.forward = (...args: unknown[]) => {
      // A native model (a Sequential of engine layers, say) converts its output in the engine.
      let converted = false;
      const out = this.autocast(() => {
        const direct = nativeForwardFloat32(model, original, args);
        converted = direct !== undefined;
        return direct ?? forward(...args);
      });
      return converted ? out : toFloat32(out);
    };
    this.#wrapped.add(model);
  }

  /** fp16: `loss` times the scale (a new tensor), for backward; otherwise `loss` itself. */
  scaleLoss(loss: Tensor): Tensor {
    return this.#scaler?.enabled ? this.#scaler.scale(loss) : loss;
  }

  /**
   * fp16: divides the gradients of `params` by the scale now (before clipping, say). Once per
   * step: another call for the same parameters does nothing until `step` updates the scale.
   * `held` are where the gradients are when a strategy holds them apart (ZeRO's partitions).
   */
  unscale(params: Tensor[], held?: Tensor[]): void {
    this.#scaler?.unscale(params, held);
  }

  /**
   * Steps the optimizer over `params` by calling `stepOptimizer`, unless (fp16) its gradients
   * hold inf or NaN; fp16 then unscales the gradients first if `unscale` did not, and updates the
   * scale. Returns whether the optimizer stepped.
   */
  step(params: Tensor[], stepOptimizer: () => void): boolean {
    const scaler = this.#scaler;
    if (scaler === null || !scaler.enabled) {
      stepOptimizer();
      this.#stepWasSkipped = false;
      return true;
    }
    const stepped = scaler.shouldStep(params);
    try {
      if (stepped) stepOptimizer();
    } finally {
      scaler.update();
    }
    this.#stepWasSkipped = !stepped;
    return stepped;
  }

  /** The scaler's state for a checkpoint (fp16), or null when there is no scaler. */
  stateDict(): GradScalerStateDict | null {
    return this.#scaler?.stateDict() ?? null;
  }

  loadStateDict(state: GradScalerStateDict | null): void {
    if (this.#scaler === null) return;
    const keys = ["scale", "growthFactor", "backoffFactor", "growthInterval", "growthTracker"] as const;
    const bad = state === null || typeof state !== "object" ? keys : keys.filter((k) => typeof state[k] !== "number");
    if (bad.length > 0) throw new Error(`PrecisionPolicy.loadStateDict: expected numbers ${bad.join(", ")} (a scaler state dict)`);
    this.#scaler.loadStateDict(state as GradScalerStateDict);
  }
}
