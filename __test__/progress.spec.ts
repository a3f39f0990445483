// The progress bar: redrawn in place through a pseudo-terminal, plain lines
// through a pipe, nothing on other ranks, and the launcher's TTY hint.
import test from "ava";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Progress } from "../ts/progress.js";

const fixture = fileURLToPath(new URL("./fixtures/ux/progress.ts", import.meta.url));
const node = [process.execPath, "--import", "@oxc-node/core/register", fixture];
const env = { ...process.env, OMP_NUM_THREADS: "1", ACCELERATE_TTY: undefined, RANK: undefined };
const hasScript = spawnSync("script", ["--version"]).status === 0;
const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

test("through a pipe: one plain line per draw, no carriage returns or escape codes", (t) => {
  const run = spawnSync(node[0], node.slice(1), { encoding: "utf8", env });
  t.is(run.status, 0, run.stderr);
  t.false(/[\r\x1b]/.test(run.stderr));
  const lines = run.stderr.trim().split("\n");
  t.true(lines.length >= 12, run.stderr);
  t.regex(lines[0], /^train:\s+\d+% \d+\/12 \[\d\d:\d\d<(\d\d:\d\d|\?), [\d.]+ (it\/s|s\/it)/);
  t.regex(lines.at(-1) ?? "", /^train: 100% 12\/12 \[.*loss=0\.08333\]$/);
});

(hasScript ? test : test.skip)(
  `through a pseudo-terminal: redrawn in place with a bar${hasScript ? "" : " (skipped: util-linux script is not installed)"}`,
  (t) => {
    const command = node.map(shellQuote).join(" ");
    const run = spawnSync("script", ["-qfec", command, "/dev/null"], { encoding: "utf8", env: { ...env, COLUMNS: "100" } });
    t.is(run.status, 0, run.stdout);
    const draws = run.stdout.split("\r").filter((d) => d.startsWith("train"));
    t.true(draws.length >= 12, JSON.stringify(run.stdout));
    t.true(draws.every((d) => d.includes("\x1b[K")));
    t.regex(draws.at(-1) ?? "", /^train: 100% \|█+\| 12\/12 \[.*loss=0\.08333\]\x1b\[K$/);
    // Redrawn lines end without a newline until the bar closes (the terminal shows \n as \r\n).
    t.is(run.stdout.split("\x1b[K\r\n").length, 2);
    t.true(run.stdout.includes("done"));
  },
);

test("off the main process nothing is drawn; ACCELERATE_TTY and ACCELERATE_COLUMNS come from the launcher", (t) => {
  const quiet = spawnSync(node[0], node.slice(1), { encoding: "utf8", env: { ...env, RANK: "1" } });
  t.is(quiet.status, 0, quiet.stderr);
  t.is(quiet.stderr, "");
  const hinted = spawnSync(node[0], node.slice(1), { encoding: "utf8", env: { ...env, ACCELERATE_TTY: "1", ACCELERATE_COLUMNS: "60" } });
  t.is(hinted.status, 0, hinted.stderr);
  const draws = hinted.stderr.split("\r").filter((d) => d.startsWith("train"));
  t.true(draws.length >= 12);
  t.true(draws.every((d) => d.replace("\x1b[K", "").replace("\n", "").length <= 59));
});

test("a manual bar without total counts steps and shows the postfix", (t) => {
  const written: string[] = [];
  const stream = { write: (s: string) => written.push(s), isTTY: false } as unknown as NodeJS.WritableStream;
  const bar = new Progress(undefined, { stream, lineInterval: 0, enabled: true });
  bar.advance(3);
  bar.update({ loss: 0.5, phase: "eval" });
  bar.close();
  t.regex(written.at(-1) ?? "", /^3 it \[\d\d:\d\d, [\d.]+ (it\/s|s\/it), loss=0\.5000, phase=eval\]\n$/);
  t.throws(() => [...bar], { message: /progress: nothing to iterate/ });
});

test("the launcher's line prefixer passes redraws on in place and plain lines whole", async (t) => {
  const { PassThrough } = await import("node:stream");
  const { pipeLines } = await import("../ts/launch/lines.js");
  const source = new PassThrough();
  const target = new PassThrough();
  let out = "";
  target.on("data", (d) => (out += d));
  pipeLines(source, target, "[rank 0] ");
  source.write("hello\n\rbar 1/3\x1b[K");
  source.write("\rbar 2/3\x1b[K\rbar 3");
  source.write("/3\x1b[K\nafter\n");
  source.end();
  await new Promise((resolve) => setImmediate(resolve));
  t.is(out, "[rank 0] hello\n\r[rank 0] bar 1/3\x1b[K\r[rank 0] bar 3\r[rank 0] bar 3/3\x1b[K\n[rank 0] after\n");
});

test("accelerate launch tells ranks whether its terminal is a TTY, and its width", async (t) => {
  const { terminalEnv } = await import("../ts/cli/commands/launch.js");
  t.deepEqual(terminalEnv({ isTTY: true, columns: 132 }), { ACCELERATE_TTY: "1", ACCELERATE_COLUMNS: "132" });
  t.deepEqual(terminalEnv({ isTTY: false }), { ACCELERATE_TTY: "0" });
});
