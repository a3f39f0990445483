// Errors that name their operation: a wrapper that prefixes argument-conversion errors from
// the addon (which do not know the operation) and a description of a value that never throws.

/** A short description of any value (BigInt, Symbol and cyclic objects included) for an error message. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return `an array of ${value.length}`;
  switch (typeof value) {
    case "number":
    case "boolean":
      return String(value);
    case "bigint":
      return `the BigInt ${value}n`;
    case "string":
      return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
    case "object":
      return `an object (${(value as { constructor?: { name?: string } }).constructor?.name ?? "no class"})`;
    default:
      return typeof value;
  }
}

/** Throws unless `value` is a string (a path), naming the operation and the argument. */
export function checkPath(op: string, name: string, value: unknown): asserts value is string {
  if (typeof value !== "string" || value === "") throw new Error(`${op}: ${name} must be a directory path (a non-empty string), got ${describe(value)}`);
}

/** Runs `fn`; an Error it throws is given the prefix `op: ` unless it already names `op`. */
export function withName<T>(op: string, fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (error instanceof Error && !error.message.startsWith(`${op}:`) && !error.message.startsWith(`${op}(`)) {
      error.message = `${op}: ${error.message}`;
    }
    throw error;
  }
}

/**
 * Throws unless `options` is an object whose keys are all in `known`, naming the first unknown
 * one and the likely intended name (a typo, or HF's snake_case spelling of a camelCase option):
 * a misspelled option would otherwise be ignored and its default used without a word.
 */
export function checkOptionNames(op: string, options: unknown, known: readonly string[]): void {
  if (options === null || typeof options !== "object" || Array.isArray(options)) throw new Error(`${op}: options must be an object, got ${describe(options)}`);
  const key = Object.keys(options).find((k) => !known.includes(k));
  if (key === undefined) return;
  const camel = key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  const suggestion = known.includes(camel) ? camel : suggestName(key, known);
  throw new Error(`${op}: unknown option ${JSON.stringify(key)}${suggestion ? ` (did you mean ${JSON.stringify(suggestion)}?)` : ""}; the options are: ${known.join(", ")}`);
}

/**
 * Every option name of `T`, checked when compiled in both directions (none missing, none that
 * `T` lacks): `optionNames<DataLoaderOptions>()(["batchSize", ...])`.
 */
export const optionNames =
  <T>() =>
  <const K extends readonly (keyof T & string)[]>(names: K & ([Exclude<keyof T, K[number]>] extends [never] ? unknown : never)): readonly string[] =>
    names;

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}

/** The closest known name, if it is close enough to be a likely typo. */
export function suggestName(name: string, known: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 4)) ? best : undefined;
}
