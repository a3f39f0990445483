// Checkpoint files from TypeScript: safetensors, Hugging Face-style sharded model
// weights, and state dicts (nested plain data with tensors) split into
// safetensors + JSON so any object with stateDict()/loadStateDict() can be saved.
import { existsSync, readFileSync } from "node:fs";
import { native } from "./native.js";
import { Tensor } from "./tensor.js";

const UNITS: Record<string, number> = {
  B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40,
};

/** Bytes in a size such as 1000, "500MB" (decimal, as Hugging Face) or "2GiB". */
export function parseSize(size: number | string): number {
  if (typeof size === "number") return size;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*$/i.exec(size);
  const unit = match ? UNITS[match[2].toUpperCase()] : undefined;
  if (!match || unit === undefined) throw new Error(`saveModel: cannot read the size "${size}" (use e.g. 10GB, 500MB, 2GiB or a byte count)`);
  return Math.floor(Number(match[1]) * unit);
}

export function saveSafetensors(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): void {
  native.saveSafetensors(path, Object.keys(tensors), Object.values(tensors), metadata);
}

export function loadSafetensors(path: string): Record<string, Tensor> {
  const { names, tensors } = native.loadSafetensors(path);
  return Object.fromEntries(names.map((n, i) => [n, tensors[i]]));
}

/** Writes `model.safetensors`, or shards plus `model.safetensors.index.json` above `maxShardSize`. Returns the files. */
export function saveWeights(tensors: Record<string, Tensor>, dir: string, maxShardSize: number | string = "10GB"): string[] {
  return native.saveModel(dir, Object.keys(tensors), Object.values(tensors), parseSize(maxShardSize));
}

/** Loads weights saved by `saveWeights` (or Hugging Face), sharded or not, onto the CPU. */
export function loadWeights(dir: string): Record<string, Tensor> {
  const { names, tensors } = native.loadModel(dir);
  return Object.fromEntries(names.map((n, i) => [n, tensors[i]]));
}

/** JSON-compatible data in which tensors may appear anywhere. */
export type StateValue = Tensor | string | number | boolean | null | StateValue[] | { [key: string]: StateValue };

const TENSOR_REF = "__tensor__";

/** Replaces each tensor of `state` by a reference into the returned tensor table. */
function split(state: StateValue, tensors: Record<string, Tensor>, path: string): unknown {
  if (state instanceof Tensor) {
    tensors[path] = state;
    return { [TENSOR_REF]: path };
  }
  if (Array.isArray(state)) return state.map((v, i) => split(v, tensors, `${path}.${i}`));
  if (state !== null && typeof state === "object") {
    return Object.fromEntries(Object.entries(state).map(([k, v]) => [k, split(v, tensors, path ? `${path}.${k}` : k)]));
  }
  if (typeof state === "number" && !Number.isFinite(state)) return { __number__: String(state) };
  return state;
}

function join_(data: unknown, tensors: Record<string, Tensor>, file: string): StateValue {
  if (Array.isArray(data)) return data.map((v) => join_(v, tensors, file));
  if (data !== null && typeof data === "object") {
    const record = data as Record<string, unknown>;
    if (typeof record[TENSOR_REF] === "string") {
      const tensor = tensors[record[TENSOR_REF]];
      if (!tensor) throw new Error(`loadState: ${file} refers to tensor "${record[TENSOR_REF]}", missing from its .safetensors file`);
      return tensor;
    }
    if (typeof record.__number__ === "string") return Number(record.__number__);
    return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, join_(v, tensors, file)]));
  }
  return data as StateValue;
}

/** Saves `state` as `<base>.json` (structure) and, if it holds tensors, `<base>.safetensors`, both atomically. */
export function saveStateFiles(base: string, state: StateValue): void {
  const tensors: Record<string, Tensor> = {};
  const structure = split(state, tensors, "");
  if (Object.keys(tensors).length > 0) saveSafetensors(`${base}.safetensors`, tensors);
  native.writeFileAtomic(`${base}.json`, `${JSON.stringify(structure, null, 2)}\n`);
}

export function loadStateFiles(base: string): StateValue {
  const file = `${base}.json`;
  const structure: unknown = JSON.parse(readFileSync(file, "utf8"));
  const tensorFile = `${base}.safetensors`;
  return join_(structure, existsSync(tensorFile) ? loadSafetensors(tensorFile) : {}, file);
}
