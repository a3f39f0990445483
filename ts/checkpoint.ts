// Checkpoint files from TypeScript: safetensors, Hugging Face-style sharded model
// weights, and state dicts (nested plain data with tensors) split into
// safetensors + JSON so any object with stateDict()/loadStateDict() can be saved.
import { lstatSync } from "node:fs";
import { basename, dirname, join } from "node:path";
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

/** Whether `path` exists, without following a symbolic link (a dangling one exists too). */
function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Parses the JSON file `name` of checkpoint directory `dir`. Only a regular file inside
 * `dir` is read (crates/core/src/checkpoint/safe_read.rs), at most 256 MiB; an error
 * names the file and never quotes it (a checkpoint may come from someone else).
 */
export function readCheckpointJson(dir: string, name: string, op = "loadState"): unknown {
  const text = native.readCheckpointFile(dir, name, op).toString("utf8");
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new Error(`${op}: ${join(dir, name)} is not valid JSON`);
  }
}

/** Loads what `saveStateFiles` saved as `base` (a path inside a checkpoint directory), reading only regular files inside it. */
export function loadStateFiles(base: string, op = "loadState"): StateValue {
  const dir = dirname(base);
  const name = basename(base);
  const structure = readCheckpointJson(dir, `${name}.json`, op);
  const tensorFile = `${name}.safetensors`;
  const tensors = present(join(dir, tensorFile)) ? loadSafetensorsIn(dir, tensorFile) : {};
  try {
    return join_(structure, tensors, join(dir, `${name}.json`));
  } catch (error) {
    for (const t of Object.values(tensors)) t.dispose();
    throw error;
  }
}

/** Reads the safetensors file `name` of checkpoint directory `dir` (only a regular file inside it). */
export function loadSafetensorsIn(dir: string, name: string): Record<string, Tensor> {
  const { names, tensors } = native.loadSafetensorsIn(dir, name);
  return Object.fromEntries(names.map((n, i) => [n, tensors[i]]));
}

/** Removes the staging directories and temporary files that interrupted saves of `dir` left beside it. */
export function cleanStaging(dir: string, op = "loadState"): string[] {
  return native.cleanStaging(dir, op);
}

/** What `saveState` writes in `accelerator_state.json`. */
export interface CheckpointMeta {
  step: number;
  saveIteration: number;
  customObjects: number;
}

/** How many objects of each kind a checkpoint carries, and which process reads it. */
export interface CheckpointLayout {
  models: number;
  optimizers: number;
  schedulers: number;
  loaders: number;
  customObjects: number;
  processIndex: number;
}

/** Everything a checkpoint holds, read and checked, not yet applied. */
export interface StagedCheckpoint {
  meta: CheckpointMeta;
  models: Record<string, Tensor>[];
  optimizers: StateValue[];
  schedulers: StateValue[];
  loaders: StateValue[];
  customObjects: StateValue[];
  scaler: unknown;
  rng: Record<string, Tensor> | undefined;
  /** fp8 amax histories by `model<i>.<parameter>` (this process's; absent without fp8). */
  fp8: Record<string, Tensor> | undefined;
  /** Frees the tensors read (after applying them, or when giving up). */
  dispose(): void;
}

function checkCount(op: string, file: string, meta: Record<string, unknown>, key: keyof CheckpointMeta): number {
  const value = meta[key];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${op}: ${file} has "${key}" ${typeof value === "number" ? value : `of type ${value === null ? "null" : typeof value}`}; it must be a non-negative integer`);
  }
  return value;
}

/** Reads and checks `accelerator_state.json` of checkpoint `dir`. */
export function readCheckpointMeta(dir: string, op = "loadState"): CheckpointMeta {
  const file = join(dir, "accelerator_state.json");
  if (!present(file)) throw new Error(`${op}: ${dir} is not a checkpoint written by saveState (no accelerator_state.json)`);
  const meta = readCheckpointJson(dir, "accelerator_state.json", op);
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) throw new Error(`${op}: ${file} is not a JSON object`);
  const record = meta as Record<string, unknown>;
  return {
    step: checkCount(op, file, record, "step"),
    saveIteration: checkCount(op, file, record, "saveIteration"),
    customObjects: checkCount(op, file, record, "customObjects"),
  };
}

/**
 * Reads a whole checkpoint written by `saveState` before anything is applied: every
 * file is opened under the rules of `readCheckpointJson`, parsed and checked, so that a
 * bad file fails the load while the model, optimizers and the rest are still untouched.
 * On failure the tensors already read are freed.
 */
export function readCheckpoint(dir: string, layout: CheckpointLayout, op = "loadState"): StagedCheckpoint {
  const read: Tensor[] = [];
  const track = <T extends StateValue | Record<string, Tensor>>(value: T): T => {
    tensorsIn(value as StateValue, read);
    return value;
  };
  const suffix = (i: number) => (i === 0 ? "" : `_${i}`);
  const times = <T>(n: number, f: (i: number) => T): T[] => Array.from({ length: n }, (_, i) => f(i));
  try {
    const meta = readCheckpointMeta(dir, op);
    if (meta.customObjects !== layout.customObjects) {
      throw new Error(`${op}: the checkpoint holds ${meta.customObjects} registered objects, but ${layout.customObjects} are registered now`);
    }
    const models = times(layout.models, (i) => track(loadSafetensorsIn(dir, `model${suffix(i)}.safetensors`)));
    const states = (prefix: string, n: number, name: (i: number) => string = (i) => `${prefix}${suffix(i)}`) =>
      times(n, (i) => track(loadStateFiles(join(dir, name(i)), op)));
    const optimizers = states("optimizer", layout.optimizers);
    const schedulers = states("scheduler", layout.schedulers);
    const loaders = states("dl_state_dict", layout.loaders);
    const customObjects = states("custom_checkpoint", layout.customObjects, (i) => `custom_checkpoint_${i}`);
    const scaler = present(join(dir, "scaler.json")) ? readCheckpointJson(dir, "scaler.json", op) : undefined;
    const rngName = `random_states_${layout.processIndex}.safetensors`;
    const rng = present(join(dir, rngName)) ? track(loadSafetensorsIn(dir, rngName)) : undefined;
    if (rng !== undefined && !(rng.cpu instanceof Tensor)) throw new Error(`${op}: ${join(dir, rngName)} holds no "cpu" generator state`);
    const fp8Name = `fp8_states_${layout.processIndex}.safetensors`;
    const fp8 = present(join(dir, fp8Name)) ? track(loadSafetensorsIn(dir, fp8Name)) : undefined;
    const columns = native.fp8StateColumns();
    for (const [key, t] of Object.entries(fp8 ?? {})) {
      if (t.shape.length !== 2 || t.shape[0] !== 3 || t.shape[1] !== columns) {
        throw new Error(`${op}: ${join(dir, fp8Name)} holds "${key}" of shape [${t.shape.join(", ")}]; an fp8 state is [3, ${columns}]`);
      }
    }
    return {
      meta, models, optimizers, schedulers, loaders, customObjects, scaler, rng, fp8,
      dispose: () => {
        for (const t of read) t.dispose();
      },
    };
  } catch (error) {
    for (const t of read) t.dispose();
    throw error;
  }
}

/** Every tensor in `value` (nested arrays and records), appended to `into`. */
export function tensorsIn(value: StateValue, into: Tensor[] = []): Tensor[] {
  if (value instanceof Tensor) into.push(value);
  else if (Array.isArray(value)) for (const v of value) tensorsIn(v, into);
  else if (value !== null && typeof value === "object") for (const v of Object.values(value)) tensorsIn(v, into);
  return into;
}
