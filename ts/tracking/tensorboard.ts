// TensorBoard event files written without TensorBoard: TFRecord framing (length,
// masked CRC32C of the length, payload, masked CRC32C of the payload) around
// hand-encoded `Event` protocol buffers: a `brain.Event:2` header, then scalar summaries.
import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import type { GeneralTracker, LogValues, TrackerConfig } from "./tracker.js";

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli), as TFRecord uses. */
export function crc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC32C_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add a constant, so CRCs of CRCs stay useful. */
export function maskedCrc32c(bytes: Uint8Array): number {
  const crc = crc32c(bytes);
  return (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0;
}

/** One TFRecord: u64 length, masked CRC of the length, data, masked CRC of the data (little-endian). */
export function tfRecord(data: Uint8Array): Buffer {
  const header = Buffer.alloc(12);
  header.writeBigUInt64LE(BigInt(data.length), 0);
  header.writeUInt32LE(maskedCrc32c(header.subarray(0, 8)), 8);
  const footer = Buffer.alloc(4);
  footer.writeUInt32LE(maskedCrc32c(data), 0);
  return Buffer.concat([header, data, footer]);
}

function varint(value: number | bigint): Buffer {
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}

const key = (field: number, wireType: number): Buffer => varint((field << 3) | wireType);
const lengthDelimited = (field: number, payload: Uint8Array): Buffer => Buffer.concat([key(field, 2), varint(payload.length), payload]);

function double(field: number, value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(value, 0);
  return Buffer.concat([key(field, 1), b]);
}

function float(field: number, value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeFloatLE(value, 0);
  return Buffer.concat([key(field, 5), b]);
}

/** `Event { wall_time = 1; step = 2; file_version = 3 | summary = 5 }`. */
export function encodeEvent(event: { wallTime: number; step: number; fileVersion?: string; scalars?: Record<string, number> }): Buffer {
  const parts = [double(1, event.wallTime), Buffer.concat([key(2, 0), varint(event.step)])];
  if (event.fileVersion !== undefined) parts.push(lengthDelimited(3, Buffer.from(event.fileVersion, "utf8")));
  if (event.scalars !== undefined) {
    // Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2 }.
    const values = Object.entries(event.scalars).map(([tag, v]) =>
      lengthDelimited(1, Buffer.concat([lengthDelimited(1, Buffer.from(tag, "utf8")), float(2, v)])),
    );
    parts.push(lengthDelimited(5, Buffer.concat(values)));
  }
  return Buffer.concat(parts);
}

/** Writes `events.out.tfevents.*` into `<loggingDir>/<runName>`; numbers become scalar summaries. */
export class TensorBoardTracker implements GeneralTracker {
  readonly name = "tensorboard";
  readonly requiresLoggingDirectory = true;
  /** The directory holding the event file (what `tensorboard --logdir` should be given, or a parent). */
  readonly logDir: string;
  /** The event file's path. */
  readonly path: string;
  private fd: number | undefined;

  constructor(runName: string, loggingDir: string) {
    this.logDir = join(loggingDir, runName);
    mkdirSync(this.logDir, { recursive: true });
    const now = Date.now() / 1000;
    this.path = join(this.logDir, `events.out.tfevents.${Math.floor(now)}.${hostname()}.${process.pid}.0`);
    this.fd = openSync(this.path, "w");
    this.write(encodeEvent({ wallTime: now, step: 0, fileVersion: "brain.Event:2" }));
  }

  /** Numeric entries of `config` become scalars at step 0 under `config/`; the rest is not representable as scalars. */
  storeInitConfiguration(config: TrackerConfig): void {
    const scalars = Object.fromEntries(
      Object.entries(config).flatMap(([k, v]) => (typeof v === "number" ? [[`config/${k}`, v]] : typeof v === "boolean" ? [[`config/${k}`, Number(v)]] : [])),
    );
    if (Object.keys(scalars).length > 0) this.write(encodeEvent({ wallTime: Date.now() / 1000, step: 0, scalars }));
  }

  /** Numbers (and booleans as 0/1) are written as scalars; strings are skipped (TensorBoard text needs tensor summaries). */
  log(values: LogValues, step: number): void {
    const scalars = Object.fromEntries(
      Object.entries(values).flatMap(([k, v]) => (typeof v === "number" ? [[k, v]] : typeof v === "boolean" ? [[k, Number(v)]] : [])),
    );
    if (Object.keys(scalars).length > 0) this.write(encodeEvent({ wallTime: Date.now() / 1000, step, scalars }));
  }

  finish(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private write(event: Buffer): void {
    if (this.fd === undefined) throw new Error(`TensorBoardTracker: ${this.path} was already closed by finish()`);
    // Written unbuffered, so that a crash keeps every logged step and TensorBoard shows a live run.
    writeSync(this.fd, tfRecord(event));
  }
}
