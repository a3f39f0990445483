// Per-device memory of model states (parameters, gradients, Adam's state) under ZeRO, by
// the formulas of the ZeRO paper (Rajbhandari et al., 2020, section 3), and the parameter
// count of a saved model read from safetensors headers (no tensors are loaded).
import { existsSync, openSync, readFileSync, readSync, closeSync } from "node:fs";
import { join } from "node:path";

export type EstimatePrecision = "fp32" | "mixed";

/**
 * Bytes per parameter of each model state. Mixed precision (fp16/bf16 with Adam): 2 for
 * the half-precision parameters, 2 for their gradients, 12 for the optimizer (fp32 master
 * copy 4, momentum 4, variance 4): the paper's (2+2+12)Ψ. fp32: 4 + 4 + 8 (momentum,
 * variance; the parameters are their own master copy).
 */
export const BYTES_PER_PARAMETER: Record<EstimatePrecision, { parameters: number; gradients: number; optimizer: number }> = {
  mixed: { parameters: 2, gradients: 2, optimizer: 12 },
  fp32: { parameters: 4, gradients: 4, optimizer: 8 },
};

export interface MemoryRow {
  processes: number;
  precision: EstimatePrecision;
  /** 0: plain data parallelism. */
  zeroStage: 0 | 1 | 2 | 3;
  offloadOptimizer: boolean;
  /** Stage 3 with the parameter shards in host memory too (ZeRO-Infinity's CPU offload). */
  offloadParameters: boolean;
  /** Bytes of model states on each device (under parameter offload, one module's come and go on top). */
  deviceBytes: number;
  /** Bytes each process keeps in host memory (the offloaded states). */
  hostBytes: number;
}

/**
 * Stage 1 divides the optimizer state by N, stage 2 also the gradients, stage 3 also the
 * parameters. Optimizer offload (ZeRO-Offload, stages 1-3) moves the divided optimizer state to the host;
 * with stage 3, parameter offload moves the rest there too (a module's parameters visit the device in turn).
 * Activations, buffers and fragmentation come on top and are not counted.
 */
export function estimateModelStateMemory(parameters: number, maxProcesses: number): MemoryRow[] {
  const counts: number[] = [];
  for (let n = 1; n < maxProcesses; n *= 2) counts.push(n);
  counts.push(maxProcesses);
  const rows: MemoryRow[] = [];
  for (const processes of counts) {
    for (const precision of ["mixed", "fp32"] as const) {
      const bytes = BYTES_PER_PARAMETER[precision];
      for (const zeroStage of [0, 1, 2, 3] as const) {
        const p = bytes.parameters * parameters / (zeroStage >= 3 ? processes : 1);
        const g = bytes.gradients * parameters / (zeroStage >= 2 ? processes : 1);
        const o = bytes.optimizer * parameters / (zeroStage >= 1 ? processes : 1);
        for (const offloadOptimizer of zeroStage === 0 ? [false] : [false, true]) {
          const row = { processes, precision, zeroStage, offloadOptimizer, offloadParameters: false };
          rows.push({ ...row, deviceBytes: Math.ceil(offloadOptimizer ? p + g : p + g + o), hostBytes: Math.ceil(offloadOptimizer ? o : 0) });
        }
        // Stage 3 offloading parameters too: every partitioned state lives on the host.
        if (zeroStage === 3) rows.push({ processes, precision, zeroStage, offloadOptimizer: true, offloadParameters: true, deviceBytes: 0, hostBytes: Math.ceil(p + g + o) });
      }
    }
  }
  return rows;
}

function safetensorsParameterCount(path: string): number {
  const fd = openSync(path, "r");
  try {
    const lengthBytes = Buffer.alloc(8);
    readSync(fd, lengthBytes, 0, 8, 0);
    const length = Number(lengthBytes.readBigUInt64LE());
    const header = Buffer.alloc(length);
    readSync(fd, header, 0, length, 8);
    const entries = JSON.parse(header.toString("utf8")) as Record<string, { shape?: number[] }>;
    let count = 0;
    for (const [name, entry] of Object.entries(entries)) {
      if (name !== "__metadata__" && entry.shape) count += entry.shape.reduce((a, b) => a * b, 1);
    }
    return count;
  } finally {
    closeSync(fd);
  }
}

/** Parameters of a saved model: `model.safetensors`, or the shards that `model.safetensors.index.json` names. */
export function savedModelParameterCount(dir: string, who: string): number {
  const index = join(dir, "model.safetensors.index.json");
  if (existsSync(index)) {
    const { weight_map: weightMap } = JSON.parse(readFileSync(index, "utf8")) as { weight_map?: Record<string, string> };
    if (!weightMap) throw new Error(`${who}: ${index} has no "weight_map"`);
    return [...new Set(Object.values(weightMap))].reduce((sum, file) => sum + safetensorsParameterCount(join(dir, file)), 0);
  }
  const single = join(dir, "model.safetensors");
  if (existsSync(single)) return safetensorsParameterCount(single);
  throw new Error(`${who}: ${dir} holds neither model.safetensors nor model.safetensors.index.json`);
}
