// Finds the libtorch this process should use and loads it, so the native addon
// links against it without the user setting LD_LIBRARY_PATH.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { homedir } from "node:os";
import { join } from "node:path";

export const TORCH_VERSION = "2.11.0";

export interface LibtorchLocation {
  /** The torch directory holding `lib/` (and `include/`). */
  dir: string;
  /** How it was found: "LIBTORCH", "cache" or "python3". */
  source: "LIBTORCH" | "cache" | "python3";
}

/** The cached virtualenv that `npm run setup` (ts/setup/provision.mjs) fills. */
function cachedTorchDirs(): string[] {
  const cacheRoot =
    process.env.ACCELERATE_TS_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "accelerate-ts");
  const lib = join(cacheRoot, `torch-${TORCH_VERSION}`, "lib");
  if (!existsSync(lib)) return [];
  return ["python3.13", "python3.12", "python3.11", "python3.10"].map((py) => join(lib, py, "site-packages", "torch"));
}

function python3TorchDir(): string | undefined {
  const probe = spawnSync("python3", ["-c", "import torch, os; print(os.path.dirname(torch.__file__))"], {
    encoding: "utf8",
    timeout: 60_000,
  });
  return probe.status === 0 ? probe.stdout.trim() : undefined;
}

const hasLibtorch = (dir: string): boolean => existsSync(join(dir, "lib", "libtorch_cpu.so"));

/** Searches `LIBTORCH`, then the cached virtualenv, then the active python3's torch. */
export function findLibtorch(): LibtorchLocation {
  const searched: string[] = [];
  const fromEnv = process.env.LIBTORCH;
  if (fromEnv) {
    if (hasLibtorch(fromEnv)) return { dir: fromEnv, source: "LIBTORCH" };
    searched.push(`LIBTORCH=${fromEnv} (no lib/libtorch_cpu.so there)`);
  } else {
    searched.push("LIBTORCH (not set)");
  }
  const cached = cachedTorchDirs().find(hasLibtorch);
  if (cached) return { dir: cached, source: "cache" };
  searched.push(`the cached virtualenv ${join("~/.cache/accelerate-ts", `torch-${TORCH_VERSION}`)} (absent)`);
  const fromPython = python3TorchDir();
  if (fromPython && hasLibtorch(fromPython)) return { dir: fromPython, source: "python3" };
  searched.push(fromPython ? `python3's torch at ${fromPython} (no libtorch_cpu.so)` : "python3 (no torch module)");
  throw new Error(
    `accelerate-ts: libtorch ${TORCH_VERSION} was not found. Searched: ${searched.join("; ")}. ` +
      `Fix: run \`npm run setup\` in the accelerate-ts package (installs torch==${TORCH_VERSION} into a cached virtualenv), ` +
      `or \`pip install torch==${TORCH_VERSION}\`, or set LIBTORCH to a torch directory containing lib/libtorch_cpu.so.`,
  );
}

// RTLD_NODELETE keeps a library mapped after process.dlopen refuses it as "not a Node module".
const RTLD_NODELETE = 0x1000;

/** Maps libtorch's libraries into the process, CUDA ones when present, in dependency order. */
export function preloadLibtorch(location: LibtorchLocation): void {
  const lib = join(location.dir, "lib");
  const flags = constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL | RTLD_NODELETE;
  const names = ["libc10.so", "libtorch_cpu.so", "libtorch.so"];
  if (existsSync(join(lib, "libtorch_cuda.so"))) names.push("libc10_cuda.so", "libtorch_cuda.so");
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
