// accelerator.profile on the CPU: operator times, flops, a Chrome trace, async functions,
// and Errors for misuse that leave no profile running. One profile runs at a time per
// process, so the tests run one after another.
import test from "ava";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Accelerator, nn, optim, randn } from "../ts/index.js";

function step(acc: Accelerator) {
  const net = new nn.Linear(32, 16);
  const [model, opt] = acc.prepare(net, new optim.SGD(net.parameters(), { lr: 0.1 }));
  return () => {
    const loss = model.forward(randn([8, 32])).square().mean();
    acc.backward(loss);
    opt.step();
    opt.zeroGrad();
    return loss.item();
  };
}

test.serial("profile returns the function's result, each operator's time (backward included) and a Chrome trace", (t) => {
  const acc = new Accelerator({ cpu: true });
  const train = step(acc);
  const dir = join(mkdtempSync(join(tmpdir(), "acc-profile-")), "traces");
  const prof = acc.profile(() => [train(), train(), train()], { outputTraceDir: dir, withFlops: true });
  t.is(prof.result.length, 3);
  t.true(prof.result.every(Number.isFinite));
  const addmm = prof.rows.find((r) => r.name === "aten::addmm");
  t.truthy(addmm, prof.table());
  t.is(addmm?.device, "cpu");
  t.is(addmm?.count, 3, "one forward matmul per step");
  t.true((addmm?.totalMs ?? 0) > 0);
  t.true((addmm?.flops ?? 0) >= 3 * 2 * 8 * 32 * 16, `flops ${addmm?.flops}`);
  t.true(prof.rows.some((r) => /AddmmBackward/.test(r.name)), "backward's operators are in the profile");
  t.true(prof.rows.every((r, i) => i === 0 || prof.rows[i - 1].totalMs >= r.totalMs), "largest first");
  t.is(prof.tracePath, join(dir, "profile_0.json"));
  const trace = JSON.parse(readFileSync(join(dir, "profile_0.json"), "utf8")) as { traceEvents: { name: string }[] };
  t.true(trace.traceEvents.some((e) => e.name === "aten::addmm"));
  const table = prof.table({ rowLimit: 5 });
  t.regex(table, /^Name\s+Device\s+Calls\s+Total ms\s+Mean us\n/);
  t.is(table.split("\n").length, 6);
});

test.serial("an async function is profiled until its Promise settles", async (t) => {
  const acc = new Accelerator({ cpu: true });
  const train = step(acc);
  const prof = await acc.profile(async () => {
    await new Promise((resolve) => setTimeout(resolve, 5));
    return train();
  });
  t.true(Number.isFinite(prof.result));
  t.true(prof.rows.some((r) => r.name === "aten::addmm"));
});

test.serial("misuse is an Error naming profile, and leaves no profile running", async (t) => {
  const acc = new Accelerator({ cpu: true });
  t.throws(() => acc.profile(() => 1, { activitys: ["cpu"] } as never), { message: /^profile: unknown option "activitys" \(did you mean "activities"\?\); the options are: activities, recordShapes/ });
  t.throws(() => acc.profile(() => 1, { activities: ["gpu"] } as never), { message: /^profile: activities hold "gpu"; each must be "cpu" or "cuda"/ });
  t.throws(() => acc.profile(() => 1, { activities: [] }), { message: /^profile: activities must be a non-empty array of "cpu" and "cuda", got an array of 0/ });
  t.throws(() => acc.profile(() => 1, { activities: null } as never), { message: /^profile: activities must be a non-empty array of "cpu" and "cuda", got null/ });
  const dir = mkdtempSync(join(tmpdir(), "acc-profile-"));
  writeFileSync(join(dir, "file"), "");
  t.throws(() => acc.profile(() => 1, { outputTraceDir: join(dir, "file") }), { message: /^profile: outputTraceDir ".*file" is not a folder/ });
  t.throws(() => acc.profile(() => 1, { outputTraceDir: join(dir, "file", "sub") }), { message: /^profile: outputTraceDir ".*file" is not a folder/ });
  mkdirSync(join(dir, "traces", "profile_0.json"), { recursive: true });
  t.throws(() => acc.profile(() => 1, { outputTraceDir: join(dir, "traces") }), { message: /^profile: cannot write the trace to .*profile_0\.json: a folder is there/ });
  const prof = acc.profile(() => 1);
  t.throws(() => prof.table({ rowLimit: -1 }), { message: /^table: rowLimit must be a non-negative integer, got -1/ });
  t.throws(() => prof.table({ rowLimit: 2.5 }), { message: /^table: rowLimit must be a non-negative integer, got 2.5/ });
  t.throws(() => prof.table({ device: "gpu" } as never), { message: /^table: device must be "cpu" or "cuda", got "gpu"/ });
  t.throws(() => prof.table({ bogus: 1 } as never), { message: /^table: unknown option "bogus"; the options are: rowLimit, device/ });
  t.throws(() => prof.table(null as never), { message: /^table: options must be an object, got null/ });
  t.is(prof.table({ rowLimit: 0 }).split("\n").length, 1, "just the header");
  t.throws(() => acc.profile(() => 1, { activities: ["cuda"] }), { message: /^profile: activities include "cuda" but this process runs on the CPU/ });
  t.throws(() => acc.profile(() => acc.profile(() => 1)), { message: /^profile: a profile is already running/ });
  t.throws(() => acc.profile(() => { throw new Error("boom"); }), { message: "boom" });
  await t.throwsAsync(() => acc.profile(async () => { throw new Error("later"); }), { message: "later" });
  t.throws(() => acc.profile(42 as never), { message: /^profile: expected a function to profile, got 42/ });
  t.is(acc.profile(() => 7).result, 7, "profiling works again after each failure");
});
