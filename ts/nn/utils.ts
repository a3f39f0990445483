// nn.utils: helpers around modules and batches (PyTorch's torch.nn.utils.rnn.pad_sequence).
import { cat, full, stack, tidy, type DType, type Tensor } from "../tensor.js";

export interface PadSequenceOptions {
  /** Output `[batch, maxLength, ...]` instead of `[maxLength, batch, ...]` (default false, as in PyTorch). */
  batchFirst?: boolean;
  /** Value of the padding elements (default 0). */
  paddingValue?: number;
  /** Pad after ("right", default) or before ("left") each sequence. */
  paddingSide?: "right" | "left";
}

/**
 * Stacks variable-length sequences (`[length_i, ...]`, the same trailing shape)
 * into one tensor padded to the longest: `[maxLength, batch, ...]`, or
 * `[batch, maxLength, ...]` with `batchFirst` (PyTorch's `pad_sequence`).
 */
export function padSequence(sequences: readonly Tensor[], options: PadSequenceOptions = {}): Tensor {
  const { batchFirst = false, paddingValue = 0, paddingSide = "right" } = options;
  if (sequences.length === 0) throw new Error("padSequence: sequences is empty; give at least one tensor");
  if (paddingSide !== "right" && paddingSide !== "left") throw new Error(`padSequence: paddingSide must be "right" or "left", got "${String(paddingSide)}"`);
  const trailing = sequences[0].shape.slice(1);
  sequences.forEach((s, i) => {
    if (s.ndim < 1) throw new Error(`padSequence: sequences[${i}] is 0-dimensional; each needs a length dimension`);
    const rest = s.shape.slice(1);
    if (rest.length !== trailing.length || rest.some((d, j) => d !== trailing[j])) {
      throw new Error(`padSequence: sequences[${i}] has shape [${s.shape.join(", ")}] but sequences[0] has [${sequences[0].shape.join(", ")}]; trailing dimensions must match`);
    }
  });
  const longest = Math.max(...sequences.map((s) => s.shape[0]));
  return tidy(() => {
    const padded = sequences.map((s) => {
      if (s.shape[0] === longest) return s;
      const pad = full([longest - s.shape[0], ...trailing], paddingValue, { dtype: s.dtype as DType, device: s.device });
      return cat(paddingSide === "right" ? [s, pad] : [pad, s], 0);
    });
    const batch = stack(padded);
    return batchFirst ? batch : batch.transpose(0, 1).contiguous();
  });
}
