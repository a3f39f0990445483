// A main-process progress bar for training and evaluation loops: step, rate, ETA
// and the last values given to `update` (e.g. the loss). It redraws one line in
// place on a terminal and prints a plain line every few seconds otherwise.

/** Values shown after the bar, e.g. `{ loss: 0.25 }`. */
export type Postfix = Record<string, number | string>;

export interface ProgressOptions {
  /** Steps in all (default: the iterable's `length`, if it has one). */
  total?: number;
  /** Text before the bar, e.g. `epoch 2`. */
  desc?: string;
  /** Draw at all (default: on the main process, `RANK` 0 or unset). */
  enabled?: boolean;
  /** Where to draw (default process.stderr, like tqdm). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /**
   * Whether to redraw in place. Default: the stream is a terminal, or, under
   * `accelerate launch`, the launcher's terminal is (`ACCELERATE_TTY=1`).
   */
  tty?: boolean;
  /** Off a terminal, seconds between printed lines (default 10; 0 prints at every step). */
  lineInterval?: number;
  /** On a terminal, seconds between redraws at least (default 0.1). */
  redrawInterval?: number;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const two = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(s % 60)}` : `${two(m)}:${two(s % 60)}`;
}

function formatValue(value: number | string): string {
  if (typeof value === "string") return value;
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 1e4 || Math.abs(value) < 1e-3 ? value.toExponential(3) : value.toPrecision(4);
}

const isMainProcessByEnv = (): boolean => (process.env.RANK ?? "0") === "0";

/**
 * A progress bar. Iterate it to advance one step per item, or call `advance()`;
 * `update(values)` sets what is shown after the bar. `close()` (or the end of
 * the iteration) draws the final state and ends the line.
 */
export class Progress<T = never> implements Iterable<T> {
  /** Steps done. */
  n = 0;
  readonly total: number | undefined;
  private readonly desc: string;
  private readonly enabled: boolean;
  private readonly stream: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  private readonly tty: boolean;
  private readonly lineInterval: number;
  private readonly redrawInterval: number;
  private readonly started = performance.now();
  private lastDraw = -Infinity;
  private postfix: Postfix = {};
  private closed = false;

  constructor(
    private readonly iterable: Iterable<T> | undefined,
    options: ProgressOptions = {},
  ) {
    const length = (iterable as { length?: unknown } | undefined)?.length;
    this.total = options.total ?? (typeof length === "number" ? length : undefined);
    this.desc = options.desc ?? "";
    this.enabled = options.enabled ?? isMainProcessByEnv();
    this.stream = options.stream ?? process.stderr;
    this.tty = options.tty ?? (this.stream.isTTY === true || process.env.ACCELERATE_TTY === "1");
    this.lineInterval = options.lineInterval ?? 10;
    this.redrawInterval = options.redrawInterval ?? 0.1;
  }

  *[Symbol.iterator](): Iterator<T> {
    if (this.iterable === undefined) throw new Error("progress: nothing to iterate; give an iterable, or call advance() in your own loop");
    try {
      for (const item of this.iterable) {
        yield item;
        this.advance();
      }
    } finally {
      this.close();
    }
  }

  /** Sets the values shown after the bar (merged with earlier ones) and redraws when due. */
  update(values: Postfix): void {
    Object.assign(this.postfix, values);
    this.draw(false);
  }

  /** Counts `steps` more steps done and redraws when due. */
  advance(steps = 1): void {
    this.n += steps;
    this.draw(false);
  }

  /** Draws the final state and ends the line. */
  close(): void {
    if (this.closed) return;
    this.draw(true);
    this.closed = true;
  }

  /** The line as it would be drawn now, `width` columns at most on a terminal. */
  render(width = 80): string {
    const elapsed = (performance.now() - this.started) / 1000;
    const rate = elapsed > 0 ? this.n / elapsed : 0;
    const rateText = rate >= 1 || rate === 0 ? `${rate.toFixed(2)} it/s` : `${(1 / rate).toFixed(2)} s/it`;
    const post = Object.entries(this.postfix).map(([k, v]) => `${k}=${formatValue(v)}`).join(", ");
    const head = this.desc ? `${this.desc}: ` : "";
    if (this.total === undefined) {
      return `${head}${this.n} it [${formatDuration(elapsed)}, ${rateText}${post ? `, ${post}` : ""}]`;
    }
    const fraction = this.total > 0 ? Math.min(1, this.n / this.total) : 1;
    const eta = rate > 0 ? (this.total - this.n) / rate : Infinity;
    const percent = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
    const tail = ` ${this.n}/${this.total} [${formatDuration(elapsed)}<${formatDuration(eta)}, ${rateText}${post ? `, ${post}` : ""}]`;
    // 3 for the bar's frame, 1 so the line never reaches the last column (where terminals wrap).
    const barWidth = Math.max(0, Math.min(40, width - head.length - percent.length - tail.length - 4));
    if (!this.tty || barWidth < 5) return `${head}${percent}${tail}`;
    const filled = Math.floor(fraction * barWidth);
    return `${head}${percent} |${"█".repeat(filled)}${" ".repeat(barWidth - filled)}|${tail}`;
  }

  private columns(): number {
    const fromEnv = Number(process.env.ACCELERATE_COLUMNS);
    // A pseudo-terminal without a size reports 0 columns.
    if (this.stream.columns !== undefined && this.stream.columns > 0) return this.stream.columns;
    return Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : 80;
  }

  private draw(final: boolean): void {
    if (!this.enabled || this.closed) return;
    const now = performance.now() / 1000;
    const due = now - this.lastDraw >= (this.tty ? this.redrawInterval : this.lineInterval);
    if (!final && !due) return;
    this.lastDraw = now;
    if (this.tty) {
      const width = this.columns();
      // \r returns to the line start and ESC[K clears what a longer previous line left.
      this.stream.write(`\r${this.render(width).slice(0, width - 1)}\x1b[K${final ? "\n" : ""}`);
    } else {
      this.stream.write(`${this.render()}\n`);
    }
  }
}

/**
 * A progress bar over `iterable` (a prepared loader, an array, a range), drawn on the main
 * process only: `for (const batch of progress(loader, { desc: "train" })) { ...; bar.update({ loss }) }`.
 */
export function progress<T>(iterable: Iterable<T>, options?: ProgressOptions): Progress<T>;
/** A progress bar for a loop of your own: call `advance()` per step and `close()` at the end. */
export function progress(options: ProgressOptions & { total: number }): Progress<never>;
export function progress<T>(first: Iterable<T> | (ProgressOptions & { total: number }), options: ProgressOptions = {}): Progress<T> {
  if (first !== null && typeof first === "object" && Symbol.iterator in first) return new Progress(first as Iterable<T>, options);
  return new Progress<T>(undefined, first as ProgressOptions);
}
