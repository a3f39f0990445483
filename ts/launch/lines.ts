// Copies a rank's output to ours a whole line at a time, each line prefixed
// with `[rank N] `, so lines from different ranks never mix inside a line.
// A line redrawn in place with `\r` (a progress bar) is passed on at each redraw.
import type { Readable, Writable } from "node:stream";

/** A line longer than this is passed on in pieces rather than held back indefinitely. */
const MAX_PENDING = 1 << 20;

/** What a terminal shows of a line redrawn with carriage returns: the text after the last one. */
const lastDrawn = (line: string): string => {
  const parts = line.split("\r");
  for (let i = parts.length - 1; i >= 0; i--) if (parts[i] !== "") return parts[i];
  return "";
};

export function pipeLines(source: Readable, target: Writable, prefix: string): void {
  let pending = "";
  // Whether a redrawn line of this source is on the target now, without its newline.
  let drawing = false;
  source.setEncoding("utf8");
  source.on("data", (chunk: string) => {
    const lines = (pending + chunk).split("\n");
    pending = lines.pop() ?? "";
    let out = "";
    for (const line of lines) {
      if (drawing || line.includes("\r")) out += `\r${prefix}${lastDrawn(line)}\n`;
      else out += `${prefix}${line}\n`;
      drawing = false;
    }
    if (pending.includes("\r")) {
      out += `\r${prefix}${lastDrawn(pending)}`;
      drawing = true;
      pending = pending.slice(pending.lastIndexOf("\r") + 1);
      if (pending !== "") pending = `\r${pending}`;
    } else if (pending.length > MAX_PENDING) {
      out += `${prefix}${pending}\n`;
      pending = "";
    }
    if (out !== "") target.write(out);
  });
  source.on("end", () => {
    if (pending !== "") target.write(`${drawing || pending.includes("\r") ? "\r" : ""}${prefix}${lastDrawn(pending)}\n`);
    else if (drawing) target.write("\n");
    pending = "";
    drawing = false;
  });
}
