// nn.init: fill a tensor in place (without recording gradients) as torch.nn.init does,
// drawing from the same generator in the same order. Each returns the tensor it filled.
import { native } from "../native.js";
import type { Tensor } from "../tensor.js";

export type Nonlinearity =
  | "linear" | "conv1d" | "conv2d" | "conv3d" | "sigmoid" | "tanh" | "relu" | "leaky_relu" | "selu";

export interface KaimingOptions {
  /** Negative slope of the leaky ReLU that follows (only with "leaky_relu"); default 0. */
  a?: number;
  /** "fanIn" keeps the forward pass's variance, "fanOut" the backward pass's; default "fanIn". */
  mode?: "fanIn" | "fanOut";
  nonlinearity?: Nonlinearity;
}

/** PyTorch's `calculate_gain`: the recommended scale for weights followed by `nonlinearity`. */
export function calculateGain(nonlinearity: Nonlinearity, param?: number): number {
  return native.nnInitGain(nonlinearity, param);
}

/** U(-b, b), b = gain·sqrt(3 / fan). */
export function kaimingUniform_(t: Tensor, options: KaimingOptions = {}): Tensor {
  native.nnInitKaimingUniform(t, options.a ?? 0, options.mode ?? "fanIn", options.nonlinearity ?? "leaky_relu");
  return t;
}

/** N(0, gain / sqrt(fan)). */
export function kaimingNormal_(t: Tensor, options: KaimingOptions = {}): Tensor {
  native.nnInitKaimingNormal(t, options.a ?? 0, options.mode ?? "fanIn", options.nonlinearity ?? "leaky_relu");
  return t;
}

/** U(-a, a), a = gain·sqrt(6 / (fanIn + fanOut)). */
export function xavierUniform_(t: Tensor, options: { gain?: number } = {}): Tensor {
  native.nnInitXavierUniform(t, options.gain ?? 1);
  return t;
}

/** N(0, gain·sqrt(2 / (fanIn + fanOut))). */
export function xavierNormal_(t: Tensor, options: { gain?: number } = {}): Tensor {
  native.nnInitXavierNormal(t, options.gain ?? 1);
  return t;
}

export function normal_(t: Tensor, options: { mean?: number; std?: number } = {}): Tensor {
  native.nnInitNormal(t, options.mean ?? 0, options.std ?? 1);
  return t;
}

/** U(a, b); default U(0, 1). */
export function uniform_(t: Tensor, options: { a?: number; b?: number } = {}): Tensor {
  native.nnInitUniform(t, options.a ?? 0, options.b ?? 1);
  return t;
}

export function constant_(t: Tensor, value: number): Tensor {
  native.nnInitConstant(t, value);
  return t;
}

export function zeros_(t: Tensor): Tensor {
  return constant_(t, 0);
}

export function ones_(t: Tensor): Tensor {
  return constant_(t, 1);
}
