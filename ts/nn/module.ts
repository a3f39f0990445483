// The base class of every model: finds parameters, buffers and child modules on the
// object itself, and gives PyTorch's Module API over them (state dicts, devices, modes).
import { native } from "../native.js";
import { keep, Tensor, type Device } from "../tensor.js";

/** Parameters and buffers by dotted name (`"fc1.weight"`, `"0.bias"`). */
export type StateDict = Record<string, Tensor>;

export interface LoadStateDictOptions {
  /** Throw on keys the model lacks or the checkpoint lacks (default true). Shapes must always match. */
  strict?: boolean;
}

export interface LoadStateDictResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

interface Members {
  parameters: [string, Tensor][];
  buffers: [string, Tensor][];
  children: [string, Module][];
}

function join(prefix: string, name: string): string {
  return prefix === "" ? name : `${prefix}.${name}`;
}

function quoted(keys: string[]): string {
  return keys.map((k) => `"${k}"`).join(", ");
}

/**
 * A model or a part of one. Subclasses assign their parts as properties, in the
 * constructor or as class fields: a `Module` value is a child, a `Tensor` that
 * requires grad is a parameter. `registerParameter` / `registerBuffer` name tensors
 * explicitly (a buffer is state that is saved but not trained). Names follow
 * PyTorch: `fc1.weight`, `0.bias`. Parameters and buffers are kept (`keep()`): no
 * `tidy` or prepared loader's step frees them once the module knows them (registered,
 * a built-in layer's, or listed by `parameters()`, `stateDict()`, `to()`, an optimizer).
 *
 * ```ts
 * class Net extends nn.Module {
 *   fc1 = new nn.Linear(784, 128);
 *   fc2 = new nn.Linear(128, 10);
 *   forward(x: Tensor): Tensor {
 *     return this.fc2.forward(nn.functional.relu(this.fc1.forward(x)));
 *   }
 * }
 * ```
 */
export abstract class Module {
  /** Training mode (dropout active); set by `train()` / `eval()` on the whole tree. */
  training = true;
  readonly #parameterNames = new Set<string>();
  readonly #bufferNames = new Set<string>();

  /** Runs the module. Subclasses choose the signature, e.g. `forward(x: Tensor): Tensor`. */
  abstract forward(...inputs: unknown[]): unknown;

  #checkName(op: string, name: string): void {
    if (typeof name !== "string" || name === "" || name.includes(".")) {
      throw new Error(`${op}: name must be a non-empty string without ".", got ${JSON.stringify(name)}`);
    }
  }

  #set(name: string, value: unknown): void {
    const self = this as unknown as Record<string, unknown>;
    if (self[name] !== value) self[name] = value;
  }

  /** Makes `tensor` the parameter `name` (also `this[name]`), whether or not it requires grad. */
  registerParameter(name: string, tensor: Tensor | null): void {
    this.#checkName("registerParameter", name);
    if (this.#bufferNames.has(name)) throw new Error(`registerParameter: "${name}" is already a buffer`);
    this.#parameterNames.add(name);
    if (tensor !== null) keep(tensor);
    this.#set(name, tensor);
  }

  /** Makes `tensor` the buffer `name` (also `this[name]`): saved in `stateDict()`, moved by `to()`, not trained. */
  registerBuffer(name: string, tensor: Tensor | null): void {
    this.#checkName("registerBuffer", name);
    if (this.#parameterNames.has(name)) throw new Error(`registerBuffer: "${name}" is already a parameter`);
    this.#bufferNames.add(name);
    if (tensor !== null) keep(tensor);
    this.#set(name, tensor);
  }

  /** Makes `module` the child `name` (also `this[name]`). */
  registerModule(name: string, module: Module | null): void {
    this.#checkName("registerModule", name);
    this.#set(name, module);
  }

  /** This module's own parameters, buffers and children, in property order. */
  #members(): Members {
    const members: Members = { parameters: [], buffers: [], children: [] };
    const self = this as unknown as Record<string, unknown>;
    for (const key of Object.keys(this)) {
      const value = self[key];
      const registered = this.#parameterNames.has(key) ? "parameter" : this.#bufferNames.has(key) ? "buffer" : null;
      if (registered !== null) {
        if (value === null || value === undefined) continue;
        if (!(value instanceof Tensor)) {
          throw new Error(`${this.constructor.name}.${key} is registered as a ${registered} but holds a ${typeof value}`);
        }
        (registered === "parameter" ? members.parameters : members.buffers).push([key, keep(value)]);
      } else if (value instanceof Module) {
        members.children.push([key, value]);
      } else if (value instanceof Tensor && !value.isDisposed && value.requiresGrad) {
        members.parameters.push([key, keep(value)]);
      }
    }
    return members;
  }

  /** Direct children by property name. */
  namedChildren(): [string, Module][] {
    return this.#members().children;
  }

  children(): Module[] {
    return this.namedChildren().map(([, m]) => m);
  }

  /** This module (named "") and every descendant, depth first, each once. */
  namedModules(): [string, Module][] {
    const out: [string, Module][] = [];
    const seen = new Set<Module>();
    const visit = (module: Module, prefix: string) => {
      if (seen.has(module)) return;
      seen.add(module);
      out.push([prefix, module]);
      for (const [name, child] of module.namedChildren()) visit(child, join(prefix, name));
    };
    visit(this, "");
    return out;
  }

  modules(): Module[] {
    return this.namedModules().map(([, m]) => m);
  }

  #named(kind: "parameters" | "buffers"): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [prefix, module] of this.namedModules()) {
      for (const [name, tensor] of module.#members()[kind]) {
        if (seen.has(tensor)) continue;
        seen.add(tensor);
        out.push([join(prefix, name), tensor]);
      }
    }
    return out;
  }

  /** Every parameter with its dotted name; a shared (tied) parameter appears once. */
  namedParameters(): [string, Tensor][] {
    return this.#named("parameters");
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  namedBuffers(): [string, Tensor][] {
    return this.#named("buffers");
  }

  buffers(): Tensor[] {
    return this.namedBuffers().map(([, t]) => t);
  }

  /** Parameters then buffers of each module, then its children's, every name kept (as PyTorch's state_dict). */
  #stateEntries(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const visit = (module: Module, prefix: string, ancestors: Set<Module>) => {
      if (ancestors.has(module)) return;
      const members = module.#members();
      for (const [name, t] of [...members.parameters, ...members.buffers]) out.push([join(prefix, name), t]);
      ancestors.add(module);
      for (const [name, child] of members.children) visit(child, join(prefix, name), ancestors);
      ancestors.delete(module);
    };
    visit(this, "", new Set());
    return out;
  }

  /** Parameters and buffers by dotted name, as detached tensors sharing their storage. */
  stateDict(): StateDict {
    const out: StateDict = {};
    for (const [name, t] of this.#stateEntries()) out[name] = t.detach();
    return out;
  }

  /**
   * Copies values from `stateDict` into this model's tensors, in place (tensors
   * held elsewhere, e.g. by an optimizer, see the new values). Throws, before
   * changing anything, on a shape mismatch and (when `strict`) on a missing or unexpected key.
   */
  loadStateDict(stateDict: StateDict | Map<string, Tensor>, options: LoadStateDictOptions = {}): LoadStateDictResult {
    const { keys, targets, sources, missingKeys, unexpectedKeys } = this.#matchStateDict(stateDict, options);
    native.nnLoadInPlace(keys, targets, sources);
    return { missingKeys, unexpectedKeys };
  }

  /**
   * Checks, without changing anything, that `loadStateDict(stateDict, options)` would
   * succeed as far as keys and shapes go; throws the same Error it would. Used by
   * `loadState` to validate every model before applying any.
   */
  checkStateDict(stateDict: StateDict | Map<string, Tensor>, options: LoadStateDictOptions = {}): LoadStateDictResult {
    const { keys, targets, sources, missingKeys, unexpectedKeys } = this.#matchStateDict(stateDict, options);
    keys.forEach((key, i) => {
      const [want, got] = [targets[i].shape, sources[i].shape];
      if (want.length !== got.length || want.some((d, j) => d !== got[j])) {
        throw new Error(`loadStateDict: "${key}" has shape [${got.join(", ")}] in the checkpoint but [${want.join(", ")}] in the model`);
      }
    });
    return { missingKeys, unexpectedKeys };
  }

  #matchStateDict(stateDict: StateDict | Map<string, Tensor>, options: LoadStateDictOptions) {
    const strict = options.strict ?? true;
    const given = stateDict instanceof Map ? stateDict : new Map(Object.entries(stateDict));
    const own = this.#stateEntries();
    const ownKeys = new Set(own.map(([k]) => k));
    const missingKeys = own.map(([k]) => k).filter((k) => !given.has(k));
    const unexpectedKeys = [...given.keys()].filter((k) => !ownKeys.has(k));
    if (strict && (missingKeys.length > 0 || unexpectedKeys.length > 0)) {
      const problems: string[] = [];
      if (missingKeys.length > 0) {
        problems.push(`missing key${missingKeys.length > 1 ? "s" : ""} ${quoted(missingKeys)} (in the model, not in the checkpoint)`);
      }
      if (unexpectedKeys.length > 0) {
        problems.push(`unexpected key${unexpectedKeys.length > 1 ? "s" : ""} ${quoted(unexpectedKeys)} (in the checkpoint, not in the model)`);
      }
      throw new Error(`loadStateDict: ${problems.join("; ")}. Pass { strict: false } to load the matching keys only.`);
    }
    const keys: string[] = [];
    const targets: Tensor[] = [];
    const sources: Tensor[] = [];
    for (const [key, target] of own) {
      const source = given.get(key);
      if (source === undefined) continue;
      if (!(source instanceof Tensor)) throw new Error(`loadStateDict: "${key}" in the checkpoint is not a Tensor`);
      keys.push(key);
      targets.push(target);
      sources.push(source);
    }
    return { keys, targets, sources, missingKeys, unexpectedKeys };
  }

  /** Sets training mode on this module and every descendant. */
  train(mode = true): this {
    for (const module of this.modules()) module.training = mode;
    return this;
  }

  /** Evaluation mode: `train(false)`. */
  eval(): this {
    return this.train(false);
  }

  /**
   * Moves parameters (with their gradients) and buffers to `device` in place: the
   * same Tensor objects, held anywhere, now live on `device`.
   */
  to(device: Device): this {
    native.nnMoveInPlace([...this.parameters(), ...this.buffers()], device);
    return this;
  }

  /** Drops every parameter's gradient (`grad` becomes null), like PyTorch's `zero_grad()`. */
  zeroGrad(): void {
    native.nnClearGrads(this.parameters());
  }

  /** Calls `fn` on every descendant, then on this module (for custom initialisation). */
  apply(fn: (module: Module) => void): this {
    for (const child of this.children()) child.apply(fn);
    fn(this);
    return this;
  }
}
