// The mixed-precision modes (Hugging Face's `mixed_precision` values), listed once for the
// Accelerator, the launchers and the config file.
import { describe } from "./errors.js";

export const MIXED_PRECISIONS = ["no", "fp16", "bf16", "fp8"] as const;
export type MixedPrecision = (typeof MIXED_PRECISIONS)[number];

/** `value` if it is a mode, else an Error from `where` listing the modes. */
export function mixedPrecisionOf(where: string, value: unknown): MixedPrecision {
  if ((MIXED_PRECISIONS as readonly unknown[]).includes(value)) return value as MixedPrecision;
  throw new Error(`${where}: mixedPrecision must be ${MIXED_PRECISIONS.map((m) => `"${m}"`).join(", ")}, got ${describe(value)}`);
}
