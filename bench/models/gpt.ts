// A GPT-2-small-shaped language model written with the library's nn modules, as a
// user would: pre-LayerNorm blocks (causal self-attention, 4x GELU MLP), untied head.
import { arange, nn, tidy, type Tensor } from "../../ts/index.js";

export interface GPTConfig {
  vocab: number;
  context: number;
  width: number;
  layers: number;
  heads: number;
}

export const GPT2_SMALL: GPTConfig = { vocab: 50304, context: 1024, width: 768, layers: 12, heads: 12 };

export class Block extends nn.Module {
  readonly ln1: nn.LayerNorm;
  readonly attn: nn.CausalSelfAttention;
  readonly ln2: nn.LayerNorm;
  readonly fc: nn.Linear;
  readonly act = new nn.GELU();
  readonly out: nn.Linear;
  /** The MLP's second half through `geluLinear`: the GELU's output is recomputed in backward, not stored. */
  private readonly recomputeGelu: boolean;

  constructor(width: number, heads: number, options: { recomputeGelu?: boolean } = {}) {
    super();
    this.recomputeGelu = options.recomputeGelu ?? false;
    this.ln1 = new nn.LayerNorm(width);
    this.attn = new nn.CausalSelfAttention(width, heads);
    this.ln2 = new nn.LayerNorm(width);
    this.fc = new nn.Linear(width, 4 * width);
    this.out = new nn.Linear(4 * width, width);
  }

  forward(x: Tensor): Tensor {
    const attended = x.add(this.attn.forward(this.ln1.forward(x)));
    return attended.add(this.mlp(this.ln2.forward(attended)));
  }

  /**
   * The block with each residual add fused with the LayerNorm after it
   * (`nn.functional.addLayerNorm`): takes the residual stream and the previous block's MLP
   * output not yet added to it (null for the first block), returns the same pair for the next.
   */
  forwardFused(residual: Tensor, pending: Tensor | null): [Tensor, Tensor] {
    const [x, normed] = pending === null ? [residual, this.ln1.forward(residual)] : this.addNorm(residual, pending, this.ln1);
    const [attended, normed2] = this.addNorm(x, this.attn.forward(normed), this.ln2);
    return [attended, this.mlp(normed2)];
  }

  private addNorm(residual: Tensor, x: Tensor, norm: nn.LayerNorm): [Tensor, Tensor] {
    return nn.functional.addLayerNorm(residual, x, norm.weight, norm.bias);
  }

  private mlp(normed: Tensor): Tensor {
    const hidden = this.fc.forward(normed);
    if (this.recomputeGelu) return nn.functional.geluLinear(hidden, this.out.weight, this.out.bias);
    return this.out.forward(this.act.forward(hidden));
  }
}

export class GPT extends nn.Module {
  readonly tok: nn.Embedding;
  readonly pos: nn.Embedding;
  readonly blocks: nn.ModuleList<Block>;
  readonly ln: nn.LayerNorm;
  readonly head: nn.Linear;
  private readonly vocab: number;
  /** Head and loss through `linearCrossEntropy` (the logits never exist whole). */
  private readonly fusedLoss: boolean;
  /** Residual adds fused with the LayerNorms after them (`Block.forwardFused`). */
  private readonly fusedNorm: boolean;
  private readonly lossChunkRows: number;

  constructor(
    config: GPTConfig = GPT2_SMALL,
    options: { fusedLoss?: boolean; lossChunkRows?: number; recomputeGelu?: boolean; fusedNorm?: boolean } = {},
  ) {
    super();
    this.vocab = config.vocab;
    this.fusedLoss = options.fusedLoss ?? false;
    this.fusedNorm = options.fusedNorm ?? false;
    this.lossChunkRows = options.lossChunkRows ?? 4096;
    this.tok = new nn.Embedding(config.vocab, config.width);
    this.pos = new nn.Embedding(config.context, config.width);
    this.blocks = new nn.ModuleList(Array.from({ length: config.layers }, () => new Block(config.width, config.heads, options)));
    this.ln = new nn.LayerNorm(config.width);
    this.head = new nn.Linear(config.width, config.vocab, { bias: false });
  }

  /**
   * The mean cross-entropy of predicting `targets` from `tokens` (both `[batch, time]`).
   * Each stage runs in `tidy`, so intermediates that autograd does not keep (like the
   * bf16 logits) are freed at once instead of when the step ends.
   */
  forward(tokens: Tensor, targets: Tensor): Tensor {
    const time = tokens.shape[1];
    let x = tidy(() => this.tok.forward(tokens).add(this.pos.forward(arange(time, undefined, 1, { device: tokens.device }))));
    let pending: Tensor | null = null;
    for (const block of this.blocks) {
      if (!this.fusedNorm) {
        x = tidy(() => block.forward(x));
        continue;
      }
      const previous: Tensor | null = pending;
      [x, pending] = tidy((): [Tensor, Tensor] => block.forwardFused(x, previous));
      // Added into x now, and kept by nothing for backward: freed at once, not when the step ends.
      previous?.dispose();
    }
    return tidy(() => {
      const features = pending === null ? this.ln.forward(x) : nn.functional.addLayerNorm(x, pending, this.ln.weight, this.ln.bias)[1];
      if (this.fusedLoss) return nn.functional.linearCrossEntropy(features, this.head.weight, targets, { chunkRows: this.lossChunkRows });
      const logits = this.head.forward(features);
      return nn.functional.crossEntropy(logits.view([-1, this.vocab]), targets.view([-1]));
    });
  }
}
