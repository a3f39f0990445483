// Trackers: TensorBoard event files read back by TensorBoard's own Python reader,
// the jsonl tracker's lines, users' GeneralTrackers, and logging on the main process only.
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { lastJson, runRanks } from "./helpers/ranks.js";
import { maskedCrc32c, crc32c } from "../ts/tracking/tensorboard.js";

const python = join(process.env.ACCELERATE_TS_CACHE ?? join(homedir(), ".cache", "accelerate-ts"), "torch-2.11.0", "bin", "python");
const hasTensorboard = existsSync(python) && spawnSync(python, ["-c", "import tensorboard"]).status === 0;
const fixture = fileURLToPath(new URL("./fixtures/ux/trackers.ts", import.meta.url));

function runFixture(dir: string) {
  const run = spawnSync(process.execPath, ["--import", "@oxc-node/core/register", fixture, dir], {
    encoding: "utf8",
    env: { ...process.env, OMP_NUM_THREADS: "1" },
  });
  if (run.status !== 0) throw new Error(run.stderr);
  return lastJson(run.stdout);
}

test("crc32c matches the published check value and TFRecord's masking", (t) => {
  t.is(crc32c(Buffer.from("123456789")), 0xe3069283);
  // TensorFlow's crc32c_test: Mask(crc) != crc, and masking is the documented rotate-and-add.
  const crc = crc32c(Buffer.from("foo"));
  t.is(maskedCrc32c(Buffer.from("foo")), (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0);
});

const tbTest = hasTensorboard ? test : test.skip;
const tbTitle = "TensorBoard's event reader reads our event file: file_version, tags, steps and values";
tbTest(hasTensorboard ? tbTitle : `${tbTitle} (skipped: no tensorboard in the torch virtualenv; run node ts/setup/provision.mjs)`, (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-tb-"));
  runFixture(dir);
  const runDir = join(dir, "run");
  const files = readdirSync(runDir).filter((f) => f.startsWith("events.out.tfevents."));
  t.is(files.length, 1);
  const script = `
import json, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = list(EventFileLoader(sys.argv[1]).Load())
acc = EventAccumulator(sys.argv[2]); acc.Reload()
print(json.dumps({
  "first": events[0].file_version,
  "tags": sorted(acc.Tags()["scalars"]),
  "loss": [[s.step, s.value] for s in acc.Scalars("train/loss")],
  "accuracy": [[s.step, s.value] for s in acc.Scalars("eval/accuracy")],
  "lr": [[s.step, s.value] for s in acc.Scalars("config/lr")],
}))`;
  const read = spawnSync(python, ["-c", script, join(runDir, files[0]), runDir], { encoding: "utf8" });
  t.is(read.status, 0, read.stderr);
  const got = JSON.parse(read.stdout);
  t.is(got.first, "brain.Event:2");
  t.deepEqual(got.tags, ["config/layers", "config/lr", "eval/accuracy", "train/loss"]);
  t.deepEqual(got.loss.map((s: number[]) => s[0]), [0, 10, 20, 30, 40]);
  got.loss.forEach((s: number[], i: number) => t.true(Math.abs(s[1] - 1 / (i + 1)) < 1e-6));
  t.deepEqual(got.accuracy, [[5, 0.5]]);
  t.true(Math.abs(got.lr[0][1] - 0.001) < 1e-9);
});

test("the jsonl tracker writes one line per log call and the config; user trackers see everything", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-jsonl-"));
  const out = runFixture(dir);
  const lines = readFileSync(join(dir, "run", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  t.deepEqual(lines.map((l) => l.step), [0, 10, 20, 30, 40, 5]);
  t.is(lines[1]["train/loss"], 0.5);
  t.is(lines[1].note, "step 1");
  t.deepEqual(JSON.parse(readFileSync(join(dir, "run", "config.json"), "utf8")), { lr: 0.001, model: "mlp", layers: 2 });
  t.is(out.tracker, "memory");
  t.deepEqual(out.seen[0], { config: { lr: 0.001, model: "mlp", layers: 2 } });
  t.deepEqual(out.seen[1], { step: 0, "train/loss": 1, note: "step 0" });
  t.is(out.seen.at(-1), "finished");
});

test("on 2 processes only the main process logs", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "acc-track2-"));
  const ranks = await runRanks("../fixtures/ux/trackers.ts", 2, [dir]);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const [r0, r1] = ranks.map((r) => lastJson(r.stdout));
  t.is(r0.tracker, "memory");
  t.is(r0.seen.length, 8);
  t.is(r1.tracker, null);
  t.deepEqual(r1.seen, []);
  t.is(readFileSync(join(dir, "run", "metrics.jsonl"), "utf8").trim().split("\n").length, 6);
});

test("logWith names are checked, and file trackers need projectDir", async (t) => {
  const { Accelerator } = await import("../ts/index.js");
  t.throws(() => new Accelerator({ cpu: true, logWith: ["wandb" as "jsonl"] }), { message: /logWith entry "wandb" is not a tracker/ });
  const accelerator = new Accelerator({ cpu: true, logWith: "tensorboard" });
  t.throws(() => accelerator.initTrackers("x"), { message: /initTrackers: the "tensorboard" tracker writes files; construct the Accelerator with projectDir/ });
  t.throws(() => accelerator.getTracker("tensorboard"), { message: /getTracker: no started tracker "tensorboard"/ });
});
