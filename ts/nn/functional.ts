// nn.functional: losses, activations and attention as plain functions (numerics in the engine).
import { checkOptionNames, optionNames, withName } from "../errors.js";
import { native } from "../native.js";
import type { Tensor } from "../tensor.js";
import { GELU_OPTIONS, type GeluOptions } from "./layers.js";

export type Reduction = "mean" | "sum" | "none";

export interface CrossEntropyOptions {
  reduction?: Reduction;
  /** Mixes the target with the uniform distribution by this amount, in [0, 1]; default 0. */
  labelSmoothing?: number;
  /** Targets equal to this class index add nothing to the loss (nor to the mean's count); default -100. */
  ignoreIndex?: number;
}

const CROSS_ENTROPY_OPTIONS = optionNames<CrossEntropyOptions>()(["reduction", "labelSmoothing", "ignoreIndex"]);

/**
 * Cross entropy of unnormalised `logits` `[N, C]` (or `[C]`, or `[N, C, d...]`) against
 * `target`: class indices `[N]` (`[]`, `[N, d...]`) or class probabilities shaped like `logits`.
 * On a GPU, class indices into `[N, C]` float32 or bf16 logits without label smoothing take
 * one kernel and one autograd node; there a target that is neither a class nor `ignoreIndex`
 * makes the loss and its row's gradient NaN (elsewhere it is an error).
 */
export function crossEntropy(logits: Tensor, target: Tensor, options: CrossEntropyOptions = {}): Tensor {
  checkOptionNames("crossEntropy", options, CROSS_ENTROPY_OPTIONS);
  const { reduction, labelSmoothing, ignoreIndex } = options;
  return withName("crossEntropy", () => native.nnCrossEntropy(logits, target, reduction, labelSmoothing, ignoreIndex));
}

/**
 * `crossEntropy(linear(input, weight), targets)` (mean over the rows whose target is not
 * `ignoreIndex`, default -100; no bias) computed `chunkRows` rows at a time (default 4096),
 * so the `[rows, classes]` logits and their gradient never exist whole: for a language
 * model's output head. `input` is `[..., features]`, `weight` `[classes, features]`,
 * `targets` integer class indices of `input`'s shape without its last dimension. Under
 * autocast the logits stay in its dtype (bf16), one chunk at a time. With every target
 * ignored the loss is NaN, as `crossEntropy`'s. A target that is neither a class nor
 * `ignoreIndex` is an Error on the CPU; on a GPU, where checking would wait for it, it makes
 * the loss and gradients NaN.
 */
export function linearCrossEntropy(
  input: Tensor,
  weight: Tensor,
  targets: Tensor,
  options: { ignoreIndex?: number; chunkRows?: number } = {},
): Tensor {
  checkOptionNames("linearCrossEntropy", options, ["ignoreIndex", "chunkRows"]);
  return withName("linearCrossEntropy", () => native.nnLinearCrossEntropy(input, weight, targets, options.ignoreIndex, options.chunkRows));
}

/** Mean squared error; `input` and `target` must have the same shape. */
export function mseLoss(input: Tensor, target: Tensor, options: { reduction?: Reduction } = {}): Tensor {
  checkOptionNames("mseLoss", options, ["reduction"]);
  return native.nnMseLoss(input, target, options.reduction);
}

export function softmax(x: Tensor, dim: number): Tensor {
  return native.nnSoftmax(x, dim);
}

export function logSoftmax(x: Tensor, dim: number): Tensor {
  return native.nnLogSoftmax(x, dim);
}

export function relu(x: Tensor): Tensor {
  return native.nnRelu(x);
}

/** GELU, exact (erf) or with the tanh approximation GPT-2 used. */
export function gelu(x: Tensor, options: GeluOptions = {}): Tensor {
  checkOptionNames("gelu", options, GELU_OPTIONS);
  return native.nnGelu(x, options.approximate);
}

/** With `training`, zeroes elements with probability `p` and scales the rest by 1/(1-p); else returns `x`. */
export function dropout(x: Tensor, p = 0.5, training = true): Tensor {
  return native.nnDropout(x, p, training);
}

export interface ScaledDotProductAttentionOptions {
  /** Boolean (true = may attend) or additive float mask, broadcastable to `[..., L, S]`. */
  attnMask?: Tensor;
  dropoutP?: number;
  /** Each query attends only to keys at or before its position. */
  isCausal?: boolean;
  /** Defaults to 1/sqrt(headDim). */
  scale?: number;
}

/** softmax(q kᵀ · scale + mask) v with libtorch's fused kernels; `q` `[..., L, E]`, `k` `[..., S, E]`, `v` `[..., S, Ev]`. */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: ScaledDotProductAttentionOptions = {},
): Tensor {
  return native.nnScaledDotProductAttention(q, k, v, options.attnMask, options.dropoutP, options.isCausal, options.scale);
}

/** `x @ weight.T + bias`. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  return native.nnLinear(x, weight, bias);
}

/**
 * `[sum, normed]` with `sum = residual.add(x)` and `normed` the LayerNorm of `sum` over its
 * last dimension (`weight` and `bias` of that width, or null; `eps` default 1e-5): the
 * residual add and the LayerNorm that a pre-LayerNorm transformer runs between sublayers, in
 * one call. `residual` and `x` have the same shape; `sum` has their promoted dtype. Under
 * autocast `normed` is in autocast's dtype, the conversion the Linear it feeds would make
 * anyway. On a GPU, with a float32 residual (the residual stream under autocast), float32 or
 * bf16 `x`, float32 weight and bias and a width that is a multiple of 4 up to 8 192, forward
 * is one kernel and backward is one pass (plus a small reduction), in place of the add, the
 * LayerNorm, the conversions and the gradients' accumulation; elsewhere it is the same
 * operations one after the other.
 */
export function addLayerNorm(
  residual: Tensor,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  options: { eps?: number } = {},
): [sum: Tensor, normed: Tensor] {
  checkOptionNames("addLayerNorm", options, ["eps"]);
  return withName("addLayerNorm", () => {
    const [sum, normed] = native.nnAddLayerNorm(residual, x, weight, bias, options.eps);
    return [sum, normed];
  });
}

/**
 * `linear(gelu(input, { approximate }), weight, bias)`, the second half of a transformer MLP,
 * with the same result (bit for bit for a contiguous input), but backward recomputes the GELU
 * from `input` instead of keeping its output: the hidden activation (4x the model's width per
 * token) is stored once, not twice, for one more elementwise pass in backward. Under
 * `mixedPrecision: "fp8"` the two run as separate calls.
 */
export function geluLinear(input: Tensor, weight: Tensor, bias?: Tensor | null, options: GeluOptions = {}): Tensor {
  checkOptionNames("geluLinear", options, GELU_OPTIONS);
  return withName("geluLinear", () => native.nnGeluLinear(input, weight, bias, options.approximate));
}
