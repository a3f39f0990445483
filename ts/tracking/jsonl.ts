// A tracker writing one JSON object per `log` call to `<loggingDir>/<runName>/metrics.jsonl`
// (and the configuration to `config.json` beside it): greppable, diffable, and read by any tool.
import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { GeneralTracker, LogValues, TrackerConfig } from "./tracker.js";

export class JsonlTracker implements GeneralTracker {
  readonly name = "jsonl";
  readonly requiresLoggingDirectory = true;
  readonly logDir: string;
  /** `metrics.jsonl`: lines `{"step":3,"time":1733000000.1,"loss":0.25}`. */
  readonly path: string;

  constructor(runName: string, loggingDir: string) {
    this.logDir = join(loggingDir, runName);
    mkdirSync(this.logDir, { recursive: true });
    // Appended to, not replaced: a resumed run continues its predecessor's file.
    this.path = join(this.logDir, "metrics.jsonl");
  }

  storeInitConfiguration(config: TrackerConfig): void {
    writeFileSync(join(this.logDir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  }

  log(values: LogValues, step: number): void {
    // Appended synchronously per call: a crashed run keeps every line it logged.
    appendFileSync(this.path, `${JSON.stringify({ step, time: Date.now() / 1000, ...values })}\n`);
  }

  finish(): void {}
}
