// saveState/loadState for an Accelerator: which files a checkpoint holds and who writes
// them, automatic checkpoint naming and pruning, atomic saves and all-or-nothing loads.
// The file formats live in ts/checkpoint.ts; the layout is documented in RELIABILITY.md.
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { cleanStaging, readCheckpoint, saveSafetensors, saveStateFiles, tensorsIn, type StateValue } from "./checkpoint.js";
import { checkPath } from "./errors.js";
import { broadcastObject, waitForEveryone } from "./collectives.js";
import type { GradientState } from "./gradient-state.js";
import { native } from "./native.js";
import { Module } from "./nn/module.js";
import type { PrecisionPolicy, GradScalerStateDict } from "./precision.js";
import type { PreparedObjects } from "./prepared.js";
import type { ProcessState } from "./state.js";
import type { Strategy } from "./strategy/index.js";
import { Optimizer } from "./optim/optimizer.js";
import { Tensor, zeros } from "./tensor.js";

export interface CheckpointingOptions {
  /** Where `saveState()` without a directory writes, with `automaticCheckpointNaming`. */
  projectDir?: string;
  automaticCheckpointNaming?: boolean;
  /** With automatic naming, keep at most this many checkpoints (oldest deleted). */
  totalLimit?: number;
}

/** What a checkpoint restores besides the prepared objects. */
export interface CheckpointParts {
  state: ProcessState;
  prepared: PreparedObjects;
  precision: PrecisionPolicy;
  gradientState: GradientState;
  strategy: Strategy;
}

const suffix = (i: number) => (i === 0 ? "" : `_${i}`);

export class Checkpointer {
  /** Checkpoints written by automatic naming. */
  saveIteration = 0;
  readonly #options: CheckpointingOptions;
  readonly #parts: CheckpointParts;

  constructor(parts: CheckpointParts, options: CheckpointingOptions) {
    this.#parts = parts;
    this.#options = options;
  }

  get #device(): string {
    return this.#parts.state.device;
  }

  get #cudaIndex(): number {
    return Number(this.#device.split(":")[1] ?? 0);
  }

  #target(dir: string | undefined, op: string): string {
    if (dir !== undefined) {
      checkPath(op, "dir", dir);
      return dir;
    }
    const { automaticCheckpointNaming, projectDir } = this.#options;
    if (automaticCheckpointNaming && projectDir) {
      const next = join(projectDir, "checkpoints", `checkpoint_${this.saveIteration}`);
      if (existsSync(next)) throw new Error(`${op}: ${next} already exists; automatic naming never overwrites a checkpoint`);
      return next;
    }
    throw new Error(`${op}: give a directory, or construct the Accelerator with projectDir and automaticCheckpointNaming`);
  }

  #latest(op: string): string {
    const root = join(this.#options.projectDir ?? "", "checkpoints");
    const found = existsSync(root)
      ? readdirSync(root).map((n) => /^checkpoint_(\d+)$/.exec(n)).filter((m): m is RegExpExecArray => m !== null)
      : [];
    if (found.length === 0) throw new Error(`${op}: no checkpoint_N directory in ${root}`);
    found.sort((a, b) => Number(a[1]) - Number(b[1]));
    return join(root, found[found.length - 1][0]);
  }

  /**
   * Saves models, optimizers, schedulers, data loader positions, registered objects and RNG
   * states into `dir`, atomically (a crash leaves the previous checkpoint intact).
   */
  save(dir?: string): string {
    const target = this.#target(dir, "saveState");
    const { state, strategy } = this.#parts;
    strategy.agree("saveState");
    // The writing process stages the shared state; every process adds its own RNG state
    // there; the writer then swaps the staging directory in for the old checkpoint.
    let staging = strategy.writesSharedState ? native.stagingDir(target) : "";
    staging = broadcastObject(staging);
    // Every process takes the models' and optimizers' state dicts: ZeRO gathers what it partitions.
    const models = this.#parts.prepared.models.map((m) => strategy.fullStateDict(m as unknown as { stateDict(): Record<string, Tensor> }));
    const optimizerStates = this.#parts.prepared.optimizers.map((o) => o.stateDict() as StateValue);
    try {
      if (strategy.writesSharedState) this.#writeShared(staging, models, optimizerStates);
      const rng: Record<string, Tensor> = { cpu: native.cpuRngState() };
      if (this.#device.startsWith("cuda")) rng.cuda = native.cudaRngState(this.#cudaIndex);
      saveSafetensors(join(staging, `random_states_${state.processIndex}.safetensors`), rng);
      // Each process's fp8 amax histories (its inputs and gradients differ from the others').
      const fp8 = this.#fp8States();
      try {
        if (fp8 !== undefined) saveSafetensors(join(staging, `fp8_states_${state.processIndex}.safetensors`), fp8);
      } finally {
        for (const t of Object.values(fp8 ?? {})) t.dispose();
      }
    } catch (error) {
      if (strategy.writesSharedState) rmSync(staging, { recursive: true, force: true });
      throw error;
    } finally {
      // A Module's state dict holds views or copies made for this save (ZeRO-3: host copies).
      models.forEach((state, i) => {
        if (this.#parts.prepared.models[i] instanceof Module) for (const t of Object.values(state)) t.dispose();
      });
    }
    waitForEveryone();
    if (strategy.writesSharedState) native.commitStagingDir(staging, target);
    waitForEveryone();
    this.saveIteration += 1;
    if (strategy.writesSharedState) this.#prune();
    return target;
  }

  #writeShared(staging: string, models: Record<string, Tensor>[], optimizerStates: StateValue[]): void {
    const { prepared, precision, gradientState } = this.#parts;
    models.forEach((state, i) => saveSafetensors(join(staging, `model${suffix(i)}.safetensors`), state));
    const files = (prefix: string, objects: { stateDict(): unknown }[], name = (i: number) => `${prefix}${suffix(i)}`) =>
      objects.forEach((o, i) => saveStateFiles(join(staging, name(i)), o.stateDict() as StateValue));
    optimizerStates.forEach((state, i) => saveStateFiles(join(staging, `optimizer${suffix(i)}`), state));
    files("scheduler", prepared.schedulers);
    files("dl_state_dict", prepared.loaders);
    files("custom_checkpoint", prepared.customObjects, (i) => `custom_checkpoint_${i}`);
    const scaler = precision.stateDict();
    if (scaler) native.writeFileAtomic(join(staging, "scaler.json"), `${JSON.stringify(scaler)}\n`);
    const meta = { step: gradientState.step, saveIteration: this.saveIteration + 1, customObjects: prepared.customObjects.length };
    native.writeFileAtomic(join(staging, "accelerator_state.json"), `${JSON.stringify(meta)}\n`);
  }

  /** The fp8 amax histories of the prepared models' layers, by `model<i>.<parameter>`; undefined when none has any. */
  #fp8States(): Record<string, Tensor> | undefined {
    const out: Record<string, Tensor> = {};
    try {
      for (const [key, parameter] of this.#parameters()) {
        const state = native.fp8State(parameter);
        if (state.shape[0] === 0) state.dispose();
        else out[key] = state;
      }
    } catch (error) {
      for (const t of Object.values(out)) t.dispose();
      throw error;
    }
    return Object.keys(out).length > 0 ? out : undefined;
  }

  /** The prepared models' parameters (of those that are a `Module`), by `model<i>.<name>`. */
  #parameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.#parts.prepared.models.forEach((m, i) => {
      if (m instanceof Module) for (const [name, p] of m.namedParameters()) out.set(`model${i}.${name}`, p);
    });
    return out;
  }

  #prune(): void {
    const { totalLimit, automaticCheckpointNaming, projectDir } = this.#options;
    if (!automaticCheckpointNaming || !projectDir || totalLimit === undefined) return;
    const root = join(projectDir, "checkpoints");
    const all = readdirSync(root).filter((n) => /^checkpoint_\d+$/.test(n)).sort((a, b) => Number(a.slice(11)) - Number(b.slice(11)));
    for (const old of all.slice(0, Math.max(0, all.length - totalLimit))) rmSync(join(root, old), { recursive: true, force: true });
  }

  /**
   * Restores everything `save` saved (the latest automatic checkpoint when `dir` is
   * omitted). Every file is read and checked first; nothing changes unless all of it loads.
   */
  load(dir?: string): void {
    if (dir !== undefined) checkPath("loadState", "dir", dir);
    const source = dir ?? this.#latest("loadState");
    if (!existsSync(source)) throw new Error(`loadState: ${source} does not exist`);
    cleanStaging(source);
    const { state, prepared } = this.#parts;
    const staged = readCheckpoint(source, {
      models: prepared.models.length,
      optimizers: prepared.optimizers.length,
      schedulers: prepared.schedulers.length,
      loaders: prepared.loaders.length,
      customObjects: prepared.customObjects.length,
      processIndex: state.processIndex,
    });
    let applied = false;
    try {
      this.#apply(staged);
      applied = true;
    } finally {
      if (!applied) staged.dispose();
    }
    // Models, the engine's optimizers, the RNG and fp8 states copied what they read; other objects may keep theirs.
    const copied = [...staged.models.flatMap(Object.values), ...Object.values(staged.rng ?? {}), ...Object.values(staged.fp8 ?? {})];
    prepared.optimizers.forEach((o, i) => {
      if (prepared.unwrapped.get(o) instanceof Optimizer) copied.push(...tensorsIn(staged.optimizers[i]));
    });
    for (const tensor of copied) tensor.dispose();
  }

  /**
   * Applies a staged checkpoint all-or-nothing: every model (a `Module`) is checked first
   * without changing it; optimizers, schedulers, loaders, registered objects, the scaler and
   * the RNG states are applied next, each after a snapshot of its current state, and restored
   * from those snapshots if a later one fails; the checked models are written last, and the
   * strategy then refreshes what it copies from them.
   */
  #apply(staged: ReturnType<typeof readCheckpoint>): void {
    const { prepared, precision, gradientState } = this.#parts;
    prepared.models.forEach((m, i) => {
      const model = m as { checkStateDict?: (state: never) => unknown };
      if (typeof model.checkStateDict === "function") model.checkStateDict(staged.models[i] as never);
    });
    const undo: (() => void)[] = [];
    const snapshots: StateValue[] = [];
    const applyWithUndo = (object: { stateDict(): unknown; loadStateDict(state: never): void }, state: unknown, freshHandles = false) => {
      const before = object.stateDict();
      if (freshHandles) snapshots.push(before as StateValue);
      object.loadStateDict(state as never);
      undo.push(() => object.loadStateDict(before as never));
    };
    try {
      prepared.optimizers.forEach((o, i) => applyWithUndo(o, staged.optimizers[i], prepared.unwrapped.get(o) instanceof Optimizer));
      prepared.schedulers.forEach((o, i) => applyWithUndo(o, staged.schedulers[i]));
      prepared.loaders.forEach((o, i) => applyWithUndo(o, staged.loaders[i]));
      prepared.customObjects.forEach((o, i) => applyWithUndo(o, staged.customObjects[i]));
      if (staged.scaler !== undefined) applyWithUndo(precision, staged.scaler as GradScalerStateDict);
      const { rng } = staged;
      if (rng) {
        applyWithUndo({ stateDict: () => native.cpuRngState(), loadStateDict: (t: Tensor) => native.setCpuRngState(t) }, rng.cpu, true);
        if (rng.cuda && this.#device.startsWith("cuda")) {
          const index = this.#cudaIndex;
          applyWithUndo({ stateDict: () => native.cudaRngState(index), loadStateDict: (t: Tensor) => native.setCudaRngState(index, t) }, rng.cuda, true);
        }
      }
      // The strategy makes sharded parameters writable (ZeRO-3) and its copies follow them after.
      this.#parts.strategy.agree("loadState");
      this.#parts.strategy.loadParameters(() => prepared.models.forEach((m, i) => m.loadStateDict(staged.models[i] as never)));
      // fp8 amax histories: the checkpoint's, and none for a layer it has none of (its next
      // call scales by its own amax), whatever the layers kept before (restored on failure).
      const none = zeros([0]);
      try {
        for (const [key, parameter] of this.#parameters()) {
          const history = { stateDict: () => native.fp8State(parameter), loadStateDict: (t: Tensor) => native.setFp8State(parameter, t) };
          applyWithUndo(history, staged.fp8?.[key] ?? none, true);
        }
      } finally {
        none.dispose();
      }
    } catch (error) {
      for (const restore of undo.reverse()) {
        try {
          restore();
        } catch {
          // The first error says what failed; a restore failing too cannot be undone further.
        }
      }
      throw error;
    } finally {
      // The engine's optimizers and the RNG getters hand out fresh handles (an optimizer's are
      // shallow clones of the state it replaces on load, so a snapshot stays valid).
      for (const snapshot of snapshots) for (const tensor of tensorsIn(snapshot)) tensor.dispose();
    }
    gradientState.step = staged.meta.step;
    this.saveIteration = staged.meta.saveIteration;
  }
}

