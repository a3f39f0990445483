// The main example trains on the real MNIST digits and must reach 97 % test accuracy.
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

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
