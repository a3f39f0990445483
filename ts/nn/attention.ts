// GPT-2 causal self-attention as one native module: qkv Linear, fused causal
// scaled-dot-product attention over heads, proj Linear, residual dropout.
import { native } from "../native.js";
import { checkOptionNames, optionNames } from "../errors.js";
import { Linear, type ParameterOptions } from "./layers.js";
import { NativeModule, nativeLayerOf } from "./native_module.js";

export interface CausalSelfAttentionOptions extends ParameterOptions {
  /** Dropout on the attention weights and after the output projection (training mode only); default 0. */
  dropout?: number;
  /** Biases in the qkv and output projections; default true. */
  bias?: boolean;
}
const CAUSAL_SELF_ATTENTION_OPTIONS = optionNames<CausalSelfAttentionOptions>()(["dropout", "bias", "dtype", "device"]);

/**
 * Input and output `[batch, time, dim]`. Parameters `qkv.weight` `[3*dim, dim]`,
 * `qkv.bias`, `proj.weight` `[dim, dim]`, `proj.bias`, as in nanoGPT / GPT-2.
 */
export class CausalSelfAttention extends NativeModule {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly dim: number;
  readonly heads: number;
  readonly dropout: number;

  constructor(dim: number, heads: number, options: CausalSelfAttentionOptions = {}) {
    checkOptionNames("CausalSelfAttention", options, CAUSAL_SELF_ATTENTION_OPTIONS);
    const { dropout = 0, bias = true, dtype, device } = options;
    const qkv = new Linear(dim, 3 * dim, { bias, dtype, device });
    const proj = new Linear(dim, dim, { bias, dtype, device });
    super(native.NativeLayer.causalSelfAttention(dim, heads, dropout, nativeLayerOf(qkv)!, nativeLayerOf(proj)!));
    this.qkv = qkv;
    this.proj = proj;
    this.dim = dim;
    this.heads = heads;
    this.dropout = dropout;
  }
}
