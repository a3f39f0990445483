// Finds the libtorch this process should use (checking its version) and loads it,
// so the native addon links against it without the user setting LD_LIBRARY_PATH.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { constants, homedir } from "node:os";
import { dirname, join } from "node:path";

export const TORCH_VERSION = "2.11.0";
/** The releases the addon links against: any 2.11.x (their C++ ABI is the same). */
const COMPATIBLE = /^2\.11\./;

export type LibtorchSource = "LIBTORCH" | "active virtualenv" | "project virtualenv" | "cache" | "python3";

export interface LibtorchLocation {
  /** The torch directory holding `lib/` (and `include/`). */
  dir: string;
  /** How it was found. */
  source: LibtorchSource;
  /** Its version (`2.11.0+cu130`), when the directory says. */
  version: string | undefined;
}

/** The commands that install a matching libtorch, for error messages and `accelerate install-libtorch`. */
export const INSTALL_COMMANDS = {
  accelerate: "npx accelerate install-libtorch",
  cpu: `pip install torch==${TORCH_VERSION} --index-url https://download.pytorch.org/whl/cpu`,
  cuda13: `pip install torch==${TORCH_VERSION}`,
} as const;

/** Where accelerate-ts keeps what it downloads or builds (`ACCELERATE_TS_CACHE`, default ~/.cache/accelerate-ts). */
export function cacheRoot(): string {
  return process.env.ACCELERATE_TS_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "accelerate-ts");
}

/** The virtualenv that `npx accelerate install-libtorch` and a checkout's `npm run setup` fill. */
export function cachedVirtualenv(): string {
  return join(cacheRoot(), `torch-${TORCH_VERSION}`);
}

const libraryName = (name: string): string => `lib${name}.${process.platform === "darwin" ? "dylib" : "so"}`;
const hasLibtorch = (dir: string): boolean => existsSync(join(dir, "lib", libraryName("torch_cpu")));

/** `torch/version.py` in wheels, `build-version` in the libtorch archives. */
export function libtorchVersion(dir: string): string | undefined {
  const versionPy = join(dir, "version.py");
  if (existsSync(versionPy)) return /^__version__\s*=\s*['"]([^'"]+)['"]/m.exec(readFileSync(versionPy, "utf8"))?.[1];
  const buildVersion = join(dir, "build-version");
  if (existsSync(buildVersion)) return readFileSync(buildVersion, "utf8").trim();
  return undefined;
}

/** `torch` in each site-packages of a virtualenv (lib/python3.X/site-packages/torch). */
function virtualenvTorchDirs(venv: string): string[] {
  const lib = join(venv, "lib");
  if (!existsSync(lib)) return [];
  return readdirSync(lib)
    .filter((name) => name.startsWith("python3"))
    .map((name) => join(lib, name, "site-packages", "torch"));
}

/** The active python3's torch package, located without importing it (which takes seconds). */
function python3TorchDir(): string | undefined {
  const probe = spawnSync(
    "python3",
    ["-c", "import importlib.util as u; s = u.find_spec('torch'); print(s.submodule_search_locations[0] if s else '')"],
    { encoding: "utf8", timeout: 30_000 },
  );
  const dir = probe.status === 0 ? probe.stdout.trim() : "";
  return dir === "" ? undefined : dir;
}

/** `.venv` or `venv` in the current folder or a parent: a project's own virtualenv. */
function projectVirtualenvs(): string[] {
  const found: string[] = [];
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    for (const name of [".venv", "venv"]) if (existsSync(join(dir, name, "pyvenv.cfg"))) found.push(join(dir, name));
    if (dirname(dir) === dir) return found;
  }
}

interface Candidate {
  dir: string;
  source: LibtorchSource;
}

/** Candidates in order, cheapest first: only the last one starts a process (python3). */
function candidates(searched: string[]): Candidate[] {
  const list: Candidate[] = [];
  const active = [process.env.VIRTUAL_ENV, process.env.CONDA_PREFIX].filter((prefix): prefix is string => !!prefix);
  for (const prefix of active) for (const dir of virtualenvTorchDirs(prefix)) list.push({ dir, source: "active virtualenv" });
  if (active.length === 0) searched.push("an active virtualenv or conda environment (none)");
  const venvs = projectVirtualenvs();
  for (const venv of venvs) for (const dir of virtualenvTorchDirs(venv)) list.push({ dir, source: "project virtualenv" });
  if (venvs.length === 0) searched.push("a .venv or venv in this folder or its parents (none)");
  const cached = virtualenvTorchDirs(cachedVirtualenv());
  for (const dir of cached) list.push({ dir, source: "cache" });
  if (cached.length === 0) searched.push(`the cache ${cachedVirtualenv()} (absent)`);
  return list;
}

/** The candidate as a location when it holds libtorch 2.11; otherwise notes why not in `searched`. */
function usable({ dir, source }: Candidate, searched: string[]): LibtorchLocation | undefined {
  if (!hasLibtorch(dir)) {
    searched.push(`${source} ${dir} (no lib/${libraryName("torch_cpu")})`);
    return undefined;
  }
  const version = libtorchVersion(dir);
  if (version !== undefined && !COMPATIBLE.test(version)) {
    searched.push(`${source} ${dir} (torch ${version}, not ${TORCH_VERSION})`);
    return undefined;
  }
  return { dir, source, version };
}

function notFound(searched: string[]): Error {
  return new Error(
    `accelerate-ts: libtorch ${TORCH_VERSION} was not found. Searched: ${searched.join("; ")}.\n` +
      "Install it with one of:\n" +
      `  ${INSTALL_COMMANDS.accelerate}   (into ${cachedVirtualenv()}; CPU or CUDA 13 chosen by nvidia-smi)\n` +
      `  ${INSTALL_COMMANDS.cpu}   (CPU only, into the active python3)\n` +
      `  ${INSTALL_COMMANDS.cuda13}   (CUDA 13.0, PyPI's default build, about 3.7 GB installed)\n` +
      `or set LIBTORCH to a libtorch ${TORCH_VERSION} directory (one with lib/${libraryName("torch_cpu")}).`,
  );
}

/**
 * Searches `LIBTORCH`, then the active virtualenv or conda environment, a project
 * virtualenv, the cache, and last the python3 on PATH; the first libtorch 2.11 wins.
 */
export function findLibtorch(): LibtorchLocation {
  const fromEnv = process.env.LIBTORCH;
  if (fromEnv) {
    // An explicit choice is used or rejected, never silently replaced.
    if (!hasLibtorch(fromEnv)) throw notFound([`LIBTORCH=${fromEnv} (no lib/${libraryName("torch_cpu")} there)`]);
    const version = libtorchVersion(fromEnv);
    if (version !== undefined && !COMPATIBLE.test(version)) {
      throw notFound([`LIBTORCH=${fromEnv} (libtorch ${version}; accelerate-ts needs ${TORCH_VERSION})`]);
    }
    return { dir: fromEnv, source: "LIBTORCH", version };
  }
  const searched = ["LIBTORCH (not set)"];
  for (const candidate of candidates(searched)) {
    const found = usable(candidate, searched);
    if (found) return found;
  }
  const fromPython = python3TorchDir();
  const found = fromPython === undefined ? undefined : usable({ dir: fromPython, source: "python3" }, searched);
  if (found) return found;
  if (fromPython === undefined) searched.push("python3 (no torch module, or no python3)");
  throw notFound(searched);
}

// RTLD_NODELETE keeps a library mapped after process.dlopen refuses it as "not a Node module".
const RTLD_NODELETE = 0x1000;

/** Maps libtorch's libraries into the process, CUDA ones when present, in dependency order. */
export function preloadLibtorch(location: LibtorchLocation): void {
  const lib = join(location.dir, "lib");
  const flags = constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL | RTLD_NODELETE;
  const names = ["c10", "torch_cpu", "torch"].map(libraryName);
  if (existsSync(join(lib, libraryName("torch_cuda")))) names.push(libraryName("c10_cuda"), libraryName("torch_cuda"));
  for (const name of names) {
    const path = join(lib, name);
    try {
      process.dlopen({ exports: {} }, path, flags);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (!message.includes("did not self-register")) {
        throw new Error(`accelerate-ts: could not load ${path} (libtorch found through ${location.source}): ${message}`);
      }
    }
  }
}
