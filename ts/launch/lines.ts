// Copies a rank's output to ours a whole line at a time, each line prefixed
// with `[rank N] `, so lines from different ranks never mix inside a line.
import type { Readable, Writable } from "node:stream";

/** A line longer than this is passed on in pieces rather than held back indefinitely. */
const MAX_PENDING = 1 << 20;

export function pipeLines(source: Readable, target: Writable, prefix: string): void {
  let pending = "";
  source.setEncoding("utf8");
  source.on("data", (chunk: string) => {
    const lines = (pending + chunk).split("\n");
    pending = lines.pop() ?? "";
    if (pending.length > MAX_PENDING) {
      lines.push(pending);
      pending = "";
    }
    if (lines.length > 0) target.write(lines.map((line) => `${prefix}${line}\n`).join(""));
  });
  source.on("end", () => {
    if (pending !== "") target.write(`${prefix}${pending}\n`);
    pending = "";
  });
}
