// The published packages work for a new user: packs the root and platform packages
// (ts/setup/pack-release.mjs), installs the tarballs into an empty project with no
// Rust toolchain on PATH, and there follows the README's Install section: its
// app.mjs under plain node, `npx accelerate env`, its train.ts under
// `npx accelerate launch` on 2 processes, and a strict type-check of that script
// against the shipped .d.ts.
import test from "ava";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const addon = join(root, "accelerate.linux-x64-gnu.node");
const work = mkdtempSync(join(tmpdir(), "accelerate-package-"));
const project = join(work, "project");
const accelerateBin = join(project, "node_modules", ".bin", "accelerate");

/** The README's Install section's code blocks whose first line names a file: `// app.mjs (...)`. */
function readmeFiles(): Map<string, string> {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const install = /^## Install\n([\s\S]*?)^## /m.exec(readme)?.[1] ?? "";
  const files = new Map<string, string>();
  for (const [, code] of install.matchAll(/^```\w+\n([\s\S]*?)^```/gm)) {
    const name = /^\/\/ (\S+\.\w+)/.exec(code ?? "")?.[1];
    if (name !== undefined && code !== undefined) files.set(name, code);
  }
  return files;
}

/** PATH without cargo and rustc, plus a folder with node, npm and npx (wherever they were). */
function pathWithoutRust(): string {
  const tools = join(work, "bin");
  mkdirSync(tools);
  for (const tool of ["node", "npm", "npx"]) {
    const found = spawnSync("which", [tool], { encoding: "utf8" }).stdout.trim();
    if (found) symlinkSync(found, join(tools, tool));
  }
  const hasRust = (dir: string): boolean => existsSync(join(dir, "cargo")) || existsSync(join(dir, "rustc"));
  return [tools, ...(process.env.PATH ?? "").split(delimiter).filter((dir) => dir !== "" && !hasRust(dir))].join(delimiter);
}

/** A user's environment: no Rust, no test-runner or npm-script variables, no checkout's settings. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^(npm_|NODE_ENV$|NODE_OPTIONS$|AVA_|INIT_CWD$|CARGO|RUSTUP)/i.test(key)) env[key] = value;
  }
  return { ...env, PATH: pathWithoutRust(), HF_HOME: join(work, "hf"), NO_COLOR: "1", OMP_NUM_THREADS: "1" };
}

let env: NodeJS.ProcessEnv = {};

function run(command: string, args: string[], cwd = project, timeout = 240_000): SpawnSyncReturns<string> {
  return spawnSync(command, args, { cwd, env, encoding: "utf8", timeout });
}

const output = (r: SpawnSyncReturns<string>): string => `exit ${r.status ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

const skipReason =
  process.platform !== "linux" || process.arch !== "x64"
    ? `the only prebuilt platform package is linux-x64-gnu; this is ${process.platform}-${process.arch}`
    : !existsSync(addon)
      ? `${addon} is missing: run \`npm run setup\` (npm test does) to build it`
      : undefined;
const serial = skipReason === undefined ? test.serial : test.serial.skip;
if (skipReason !== undefined) test.skip(`packaging: ${skipReason}`, () => {});

test.before(() => {
  if (skipReason !== undefined) return;
  env = userEnv();
  const packed = spawnSync(process.execPath, [join(root, "ts", "setup", "pack-release.mjs"), join(work, "tarballs")], { encoding: "utf8" });
  if (packed.status !== 0) throw new Error(`pack-release failed: ${output(packed)}`);
  const tarballs = JSON.parse(packed.stdout) as string[];
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), `${JSON.stringify({ name: "new-user", version: "1.0.0", private: true }, null, 2)}\n`);
  for (const [name, code] of readmeFiles()) writeFileSync(join(project, name), code);
  // The README's `npm install accelerate-ts`, from the tarballs; typescript and @types/node for the type-check.
  const install = run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", ...tarballs, "typescript@5.9.3", "@types/node@^20.19.0"]);
  if (install.status !== 0) throw new Error(`npm install failed: ${output(install)}`);
});

serial("the installed package has no Rust toolchain at hand and no sources: dist/ and the platform package", (t) => {
  t.is(run("cargo", ["--version"]).error?.message.includes("ENOENT"), true);
  t.is(run("rustc", ["--version"]).error?.message.includes("ENOENT"), true);
  const installed = join(project, "node_modules", "accelerate-ts");
  t.true(existsSync(join(installed, "dist", "index.js")));
  t.false(existsSync(join(installed, "ts")));
  t.false(existsSync(join(installed, "accelerate.linux-x64-gnu.node")));
  t.true(existsSync(join(project, "node_modules", "accelerate-ts-linux-x64-gnu", "accelerate.linux-x64-gnu.node")));
});

serial("the installed README's links to docs/ and BENCHMARKS.md resolve inside the package", (t) => {
  const installed = join(project, "node_modules", "accelerate-ts");
  const readme = readFileSync(join(installed, "README.md"), "utf8");
  const links = [...readme.matchAll(/\]\(((?:docs\/[\w.-]+\.md)|BENCHMARKS\.md)(?:#[\w-]*)?\)/g)].map((m) => m[1]);
  t.true(links.length >= 5, `links found: ${links.join(", ")}`);
  for (const link of links) t.true(existsSync(join(installed, link)), `${link} is in the package`);
});

serial("README app.mjs: plain node imports the package and trains 3 steps", (t) => {
  t.true(readmeFiles().has("app.mjs"), "the README's Install section has an app.mjs block");
  const r = run("node", ["app.mjs"]);
  t.is(r.status, 0, output(r));
  const losses = [...r.stdout.matchAll(/^step (\d): loss ([\d.]+)$/gm)].map((m) => Number(m[2]));
  t.is(losses.length, 3, output(r));
  t.true((losses[2] ?? Infinity) < (losses[0] ?? 0), `loss falls over 3 steps: ${losses.join(", ")}`);
});

serial("npx accelerate env names the platform package's addon and a libtorch 2.11", (t) => {
  const r = run("npx", ["accelerate", "env"]);
  t.is(r.status, 0, output(r));
  t.regex(r.stdout, /- native addon: .*node_modules\/accelerate-ts-linux-x64-gnu\/accelerate\.linux-x64-gnu\.node \(from accelerate-ts-linux-x64-gnu\)/);
  t.regex(r.stdout, /- torch version: 2\.11\./);
  t.notRegex(r.stdout, /NOT FOUND|could not load/);
});

serial("README train.ts (class fields): npx accelerate launch --cpu --num_processes 2", (t) => {
  t.true(readmeFiles().has("train.ts"), "the README's Install section has a train.ts block");
  const r = run("npx", ["accelerate", "launch", "--cpu", "--num_processes", "2", "--main_process_port", "0", "train.ts"]);
  t.is(r.status, 0, output(r));
  t.regex(r.stdout, /trained on 2 processes, last loss \d+\.\d{4}/);
});

serial("the shipped .d.ts type-check README train.ts under strict + noUncheckedIndexedAccess", (t) => {
  const tsconfig = {
    compilerOptions: { target: "ES2022", module: "NodeNext", strict: true, noUncheckedIndexedAccess: true, skipLibCheck: false, noEmit: true, types: ["node"] },
    files: ["train.ts"],
  };
  writeFileSync(join(project, "tsconfig.json"), JSON.stringify(tsconfig, null, 2));
  const r = run("npx", ["tsc", "-p", "."]);
  t.is(r.status, 0, output(r));
});

serial("a .ts with decorators and `using`, in a folder with nothing installed, under accelerate launch", (t) => {
  const elsewhere = join(work, "elsewhere");
  mkdirSync(elsewhere);
  writeFileSync(
    join(elsewhere, "features.ts"),
    [
      'import { tensor } from "accelerate-ts";',
      "function traced(method: (this: Probe) => number, context: ClassMethodDecoratorContext) {",
      "  return function (this: Probe): number { console.log(`calling ${String(context.name)}`); return method.call(this); };",
      "}",
      "class Probe { static seen = 0; #scale = 2; weight = tensor([1, 2, 3]); @traced total(): number { return this.weight.sum().item() * this.#scale; } }",
      "{ using t = tensor([4, 5]); console.log(`sum ${t.sum().item()}`); }",
      "console.log(`total ${new Probe().total()}`);",
    ].join("\n"),
  );
  const r = run(accelerateBin, ["launch", "--cpu", "--num_processes", "1", "features.ts"], elsewhere);
  t.is(r.status, 0, output(r));
  t.regex(r.stdout, /sum 9\n[\s\S]*calling total\n[\s\S]*total 12/);
  // The same hooks without the launcher, as the README says.
  writeFileSync(join(project, "features.ts"), readFileSync(join(elsewhere, "features.ts")));
  const direct = run("node", ["--import", "accelerate-ts/register", "features.ts"]);
  t.is(direct.status, 0, output(direct));
  t.regex(direct.stdout, /total 12/);
});

serial("npx accelerate install-libtorch finds the libtorch already there; --dry_run shows the pip command", (t) => {
  const found = run("npx", ["accelerate", "install-libtorch"]);
  t.is(found.status, 0, output(found));
  t.regex(found.stdout + found.stderr, /libtorch 2\.11\.\S* is already available/);
  const dry = run("npx", ["accelerate", "install-libtorch", "--force", "--dry_run", "--variant", "cpu"]);
  t.is(dry.status, 0, output(dry));
  t.regex(dry.stdout, /pip install .*torch==2\.11\.0 --index-url https:\/\/download\.pytorch\.org\/whl\/cpu/);
});

serial("accelerate config with stdin from a pipe says it needs a terminal and suggests `config default`", (t) => {
  const r = spawnSync("npx", ["accelerate", "config"], { cwd: project, env, encoding: "utf8", input: "MULTI_CPU\n", timeout: 60_000 });
  t.is(r.status, 1, output(r));
  t.regex(r.stdout + r.stderr, /needs? a terminal[\s\S]*accelerate config default/);
});

serial("a libtorch of another version is named and refused: LIBTORCH's is an error, a project virtualenv's is skipped", (t) => {
  const fakeTorch = (dir: string, version: string): void => {
    mkdirSync(join(dir, "lib"), { recursive: true });
    writeFileSync(join(dir, "lib", "libtorch_cpu.so"), "");
    writeFileSync(join(dir, "version.py"), `__version__ = '${version}'\n`);
  };
  const old = join(work, "old-torch");
  fakeTorch(old, "2.5.1+cpu");
  const refused = spawnSync("node", ["app.mjs"], { cwd: project, env: { ...env, LIBTORCH: old }, encoding: "utf8" });
  t.is(refused.status, 1, output(refused));
  t.regex(refused.stderr, /LIBTORCH=\S+old-torch \(libtorch 2\.5\.1\+cpu; accelerate-ts needs 2\.11\.0\)/);
  t.regex(refused.stderr, /npx accelerate install-libtorch[\s\S]*pip install torch==2\.11\.0 --index-url https:\/\/download\.pytorch\.org\/whl\/cpu[\s\S]*pip install torch==2\.11\.0 /);

  const venv = join(work, "venv-project", ".venv");
  mkdirSync(venv, { recursive: true });
  writeFileSync(join(venv, "pyvenv.cfg"), "home = /usr/bin\n");
  fakeTorch(join(venv, "lib", "python3.11", "site-packages", "torch"), "2.4.0");
  const skipped = run(accelerateBin, ["env"], dirname(venv));
  t.is(skipped.status, 0, output(skipped));
  t.regex(skipped.stdout, /- torch version: 2\.11\./, "the cache's libtorch, not the project's 2.4.0");
});

serial("ACCELERATE_TS_NATIVE_LIBRARY_PATH picks the addon; a path with no file there is an error naming the variable", (t) => {
  const chosen = spawnSync("npx", ["accelerate", "env"], { cwd: project, env: { ...env, ACCELERATE_TS_NATIVE_LIBRARY_PATH: addon }, encoding: "utf8" });
  t.regex(chosen.stdout, new RegExp(`- native addon: ${addon.replaceAll(".", "\\.")} \\(from ACCELERATE_TS_NATIVE_LIBRARY_PATH\\)`), output(chosen));
  const missing = spawnSync("node", ["app.mjs"], { cwd: project, env: { ...env, ACCELERATE_TS_NATIVE_LIBRARY_PATH: "/nowhere/accelerate.node" }, encoding: "utf8" });
  t.is(missing.status, 1, output(missing));
  t.regex(missing.stderr, /ACCELERATE_TS_NATIVE_LIBRARY_PATH=\/nowhere\/accelerate\.node, but there is no file/);
});

// Runs only when every test passed: a failed run leaves the project for inspection.
test.after(() => rmSync(work, { recursive: true, force: true }));
