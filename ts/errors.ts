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

/** Throws unless `options` is an object whose keys are all in `known`, naming the unknown ones. */
export function checkOptionNames(op: string, options: unknown, known: readonly string[]): void {
  if (options === null || typeof options !== "object" || Array.isArray(options)) throw new Error(`${op}: options must be an object, got ${describe(options)}`);
  const unknown = Object.keys(options).filter((k) => !known.includes(k));
  if (unknown.length > 0) throw new Error(`${op}: unknown option ${unknown.map((k) => JSON.stringify(k)).join(", ")}; the options are: ${known.join(", ")}`);
}
