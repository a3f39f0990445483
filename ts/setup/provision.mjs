#!/usr/bin/env node
// Makes this checkout ready to run, and is quick when it already is: node
// dependencies, libtorch (the torch wheel in a cached virtualenv, keyed by
// version) and an up-to-date native addon. Plain JS: it runs before anything is installed.
//   node ts/setup/provision.mjs                 ensure everything
//   node ts/setup/provision.mjs --cargo ARGS    then run cargo ARGS with libtorch configured
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const TORCH_VERSION = "2.11.0";
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const cacheRoot =
  process.env.ACCELERATE_TS_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "accelerate-ts");
const venv = join(cacheRoot, `torch-${TORCH_VERSION}`);
const cargoTarget = join(cacheRoot, `cargo-target-torch-${TORCH_VERSION}`);
const addon = join(root, "accelerate.linux-x64-gnu.node");

function say(message) {
  process.stderr.write(`provision: ${message}\n`);
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: "inherit", cwd: root, ...options });
  if (result.status !== 0) {
    const why = result.error ? result.error.message : `exit code ${result.status ?? result.signal}`;
    throw new Error(`provision: \`${command} ${args.join(" ")}\` failed (${why})`);
  }
}

function mtime(path) {
  return existsSync(path) ? statSync(path).mtimeMs : 0;
}

/** The newest modification time of the files under `path`. */
function newest(path) {
  if (!existsSync(path)) return 0;
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(stat.mtimeMs, ...readdirSync(path).map((name) => newest(join(path, name))));
}

function ensureNodeDependencies() {
  const installed = join(root, "node_modules", ".package-lock.json");
  const lock = join(root, "package-lock.json");
  if (mtime(installed) >= Math.max(mtime(lock), mtime(join(root, "package.json")))) return;
  say("installing node dependencies");
  run("npm", [existsSync(lock) ? "ci" : "install", "--no-audit", "--no-fund"]);
}

/** Returns the environment under which tch's build finds libtorch. */
function ensureLibtorch() {
  if (process.env.LIBTORCH) return { ...process.env };
  const marker = join(venv, ".complete");
  if (!existsSync(marker)) {
    say(`installing torch==${TORCH_VERSION} into ${venv} (once; about 4 GB)`);
    mkdirSync(cacheRoot, { recursive: true });
    run("python3", ["-m", "venv", venv]);
    run(join(venv, "bin", "pip"), ["install", "--no-input", "--disable-pip-version-check", `torch==${TORCH_VERSION}`]);
    writeFileSync(marker, `${new Date().toISOString()}\n`);
  }
  ensureCudaHeaders();
  ensurePythonSafetensors();
  ensurePythonTensorboard();
  return { ...process.env, LIBTORCH_USE_PYTORCH: "1", PATH: `${join(venv, "bin")}:${process.env.PATH}` };
}

/**
 * The NCCL backend compiles against CUDA's headers; the torch wheel ships only part of
 * them, so add CUDA's C++ core headers (crt, cccl) from the same CUDA release.
 */
function ensureCudaHeaders() {
  const include = join(venv, "lib", `python${pythonVersion()}`, "site-packages", "nvidia", "cu13", "include");
  if (!existsSync(include) || existsSync(join(include, "nv", "target"))) return;
  say("installing CUDA 13.0 C++ headers (nvidia-cuda-cccl, nvidia-cuda-crt) for the NCCL backend");
  run(join(venv, "bin", "pip"), ["install", "--no-input", "--disable-pip-version-check", "nvidia-cuda-cccl==13.0.*", "nvidia-cuda-crt==13.0.*"]);
}

/** Python's `safetensors`, which the checkpoint tests use to read our files and write theirs. */
function ensurePythonSafetensors() {
  const probe = spawnSync(join(venv, "bin", "python"), ["-c", "import safetensors, numpy"], { stdio: "ignore" });
  if (probe.status === 0) return;
  say("installing Python's safetensors and numpy into the torch virtualenv (for the checkpoint interoperability tests)");
  run(join(venv, "bin", "pip"), ["install", "--no-input", "--disable-pip-version-check", "safetensors", "numpy"]);
}

/** Python's `tensorboard`, whose event reader the tracker tests use to read our event files back. */
function ensurePythonTensorboard() {
  const probe = spawnSync(join(venv, "bin", "python"), ["-c", "import tensorboard"], { stdio: "ignore" });
  if (probe.status === 0) return;
  say("installing Python's tensorboard into the torch virtualenv (for the TensorBoard event file tests)");
  run(join(venv, "bin", "pip"), ["install", "--no-input", "--disable-pip-version-check", "tensorboard"]);
}

function pythonVersion() {
  const probe = spawnSync(join(venv, "bin", "python"), ["-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"], {
    encoding: "utf8",
  });
  return probe.stdout.trim();
}

/** c10d's Gloo backend needs gloo's headers at build time (its code is inside libtorch). */
function ensureGlooHeaders() {
  if (existsSync("/usr/include/gloo/algorithm.h")) return;
  say("installing gloo headers (Debian package libgloo-dev)");
  const sudo = process.getuid?.() === 0 ? [] : ["sudo"];
  run(sudo[0] ?? "apt-get", [...sudo.slice(1), ...(sudo.length ? ["apt-get"] : []), "install", "-y", "-q", "libgloo-dev"], {
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
}

function ensureNativeAddon(env) {
  const sources = Math.max(newest(join(root, "crates")), mtime(join(root, "Cargo.toml")), mtime(join(root, "Cargo.lock")));
  if (mtime(addon) >= sources) return;
  say("building the native addon (the first build compiles libtorch bindings: several minutes)");
  run(join(root, "node_modules", ".bin", "napi"), [
    "build", "--platform", "--release", "--package", "accelerate-napi", "--output-dir", ".", "--dts", "index.d.ts", "--no-js",
  ], { env });
}

function main() {
  const args = process.argv.slice(2);
  ensureNodeDependencies();
  const env = { ...ensureLibtorch(), CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR || cargoTarget };
  ensureGlooHeaders();
  ensureNativeAddon(env);
  if (args[0] === "--cargo") run("cargo", args.slice(1), { env });
}

try {
  main();
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
