// Gradient clipping, as torch.nn.utils.clip_grad_norm_ and clip_grad_value_ (computed in the engine).
import { native } from "../native.js";
import type { Tensor } from "../tensor.js";
import { tensorList } from "./params.js";

/**
 * Scales the gradients of `params` in place so that their total `normType` norm (2 by
 * default; `Infinity` for the largest magnitude) is at most `maxNorm`, and returns the
 * total norm before clipping. Parameters without gradients are skipped; with none, returns 0.
 * With `errorIfNonfinite`, a NaN or infinite total norm throws instead of scaling.
 */
export function clipGradNorm(
  params: Iterable<Tensor> | Tensor,
  maxNorm: number,
  normType = 2,
  errorIfNonfinite = false,
): number {
  for (const [name, value] of [["maxNorm", maxNorm], ["normType", normType]] as const) {
    if (typeof value !== "number") throw new Error(`clipGradNorm: ${name} must be a number, got ${typeof value}`);
  }
  return native.clipGradNorm(tensorList("clipGradNorm", "params", params), maxNorm, normType, errorIfNonfinite);
}

/** Clamps every gradient element of `params` into [-clipValue, clipValue], in place. */
export function clipGradValue(params: Iterable<Tensor> | Tensor, clipValue: number): void {
  if (typeof clipValue !== "number") throw new Error(`clipGradValue: clipValue must be a number, got ${typeof clipValue}`);
  native.clipGradValue(tensorList("clipGradValue", "params", params), clipValue);
}
