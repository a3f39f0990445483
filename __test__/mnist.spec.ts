// The main example trains on the real MNIST digits and must reach 97 % test accuracy, on 1 and on 2 processes.
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runRanks } from "./helpers/ranks.js";

test("examples/mnist.ts reaches at least 97 % test accuracy and saves the model", (t) => {
  const out = join(mkdtempSync(join(tmpdir(), "acc-mnist-")), "model");
  const script = fileURLToPath(new URL("../examples/mnist.ts", import.meta.url));
  const run = spawnSync(process.execPath, ["--import", "@oxc-node/core/register", script, out], { encoding: "utf8" });
  t.is(run.status, 0, run.stderr);
  const accuracies = [...run.stdout.matchAll(/test accuracy ([\d.]+)% \(2000 digits\)/g)].map((m) => Number(m[1]));
  t.is(accuracies.length, 4, run.stdout);
  t.true(accuracies[accuracies.length - 1] >= 97, `final accuracy ${accuracies[accuracies.length - 1]} %`);
  t.true(existsSync(join(out, "model.safetensors")));
});

test("examples/mnist.ts on 2 processes reaches at least 97 % test accuracy, with the schedule counted on the unsharded loader", async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), "acc-mnist2-")), "model");
  const ranks = await runRanks("../../examples/mnist.ts", 2, [out], 300_000);
  for (const r of ranks) t.is(r.code, 0, r.stderr);
  const accuracies = [...ranks[0].stdout.matchAll(/test accuracy ([\d.]+)% \(2000 digits\)/g)].map((m) => Number(m[1]));
  t.is(accuracies.length, 4, ranks[0].stdout);
  t.true(accuracies[3] >= 97, `final accuracy ${accuracies[3]} % on 2 processes`);
  // The learning rate never reaches 0 early: epochs 3 and 4 still change the loss.
  const losses = [...ranks[0].stdout.matchAll(/train loss ([\d.]+)/g)].map((m) => m[1]);
  t.not(losses[2], losses[3], ranks[0].stdout);
  t.true(existsSync(join(out, "model.safetensors")));
});
