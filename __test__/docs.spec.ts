// Every ts/js code block of README.md and docs/*.md runs (CPU, one process, small
// sizes), with "accelerate-ts" resolved to this checkout; a block preceded by
// `<!-- docs-test: skip REASON -->` is reported as skipped with its reason.
// The API reference (TypeDoc) builds from the sources and documents the public names.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const index = pathToFileURL(join(root, "ts", "index.ts")).href;
const files = ["README.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];

interface Block {
  file: string;
  line: number;
  code: string;
  skip?: string;
}

const blocks: Block[] = files.flatMap((file) => {
  const text = readFileSync(join(root, file), "utf8");
  const found: Block[] = [];
  for (const match of text.matchAll(/(?:<!-- docs-test: skip ([^>]*?) -->\n)?```(ts|js|typescript|javascript)\n([\s\S]*?)```/g)) {
    const line = text.slice(0, match.index).split("\n").length + (match[1] ? 1 : 0);
    found.push({ file, line, code: match[3], skip: match[1] });
  }
  return found;
});

test("README and docs have code blocks to run", (t) => {
  t.true(blocks.length >= 10, `${blocks.length} blocks`);
  t.true(files.length >= 11, files.join(", "));
});

for (const block of blocks) {
  const title = `${block.file}:${block.line} runs`;
  if (block.skip !== undefined) {
    test.skip(`${title} (skipped: ${block.skip})`, () => {});
    continue;
  }
  test(title, (t) => {
    const dir = mkdtempSync(join(tmpdir(), "acc-docs-"));
    const script = join(dir, "block.mts");
    writeFileSync(script, block.code.replaceAll(`from "accelerate-ts"`, `from ${JSON.stringify(index)}`));
    const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: "1" };
    for (const key of ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]) delete env[key];
    const run = spawnSync(process.execPath, ["--import", pathToFileURL(join(root, "ts", "launch", "typescript-register.mjs")).href, script], {
      cwd: dir,
      env,
      encoding: "utf8",
      timeout: 120_000,
    });
    t.is(run.status, 0, `${block.file}:${block.line}\n${run.stderr}`);
  });
}

test("the API reference builds from the TypeScript sources and documents the public names", (t) => {
  const out = join(mkdtempSync(join(tmpdir(), "acc-typedoc-")), "api.json");
  const run = spawnSync(process.execPath, [join(root, "node_modules", "typedoc", "bin", "typedoc"), "--json", out, "--emit", "docs"], {
    cwd: root,
    encoding: "utf8",
    timeout: 180_000,
  });
  t.is(run.status, 0, run.stdout + run.stderr);
  const api = readFileSync(out, "utf8");
  for (const name of ["Accelerator", "initTrackers", "gatherForMetrics", "GeneralTracker", "padSequence", "Progress", "DataLoader"]) {
    t.true(api.includes(`"name":"${name}"`) || api.includes(`"name": "${name}"`), name);
  }
});
