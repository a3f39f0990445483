// `accelerate env`: what a bug report needs: versions, platform, where libtorch
// was found and why, CUDA, and the config file in use.
import { existsSync, readFileSync } from "node:fs";
import { availableParallelism, release, totalmem } from "node:os";
import { join } from "node:path";
import { defineCommand } from "citty";
import type { LibtorchSource } from "../../libtorch.js";
import { defaultConfigPath } from "../config-file.js";

const SOURCE_REASONS: Record<LibtorchSource, string> = {
  LIBTORCH: "the LIBTORCH environment variable points there",
  "active virtualenv": "the activated virtualenv or conda environment (VIRTUAL_ENV, CONDA_PREFIX)",
  "project virtualenv": "a .venv or venv in this folder or a parent",
  cache: "the cache that `npx accelerate install-libtorch` (or a checkout's `npm run setup`) fills",
  python3: "the torch module of the python3 on PATH",
};

/** The CUDA release torch's version.py names (wheels have it). */
function torchCuda(dir: string): string | undefined {
  const path = join(dir, "version.py");
  if (!existsSync(path)) return undefined;
  return /^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]/m.exec(readFileSync(path, "utf8"))?.[1];
}

async function libtorchLines(): Promise<string[]> {
  const { findLibtorch } = await import("../../libtorch.js");
  let location;
  try {
    location = findLibtorch();
  } catch (error) {
    return [`- libtorch: NOT FOUND: ${(error as Error).message}`];
  }
  const cuda = torchCuda(location.dir);
  const lines = [
    `- libtorch: ${location.dir}`,
    `  found through ${location.source} (${SOURCE_REASONS[location.source]})`,
    `- torch version: ${location.version ?? "unknown (no version.py or build-version)"}${cuda ? ` (built for CUDA ${cuda})` : ""}`,
  ];
  try {
    const { addon, native } = await import("../../native.js");
    lines.push(`- native addon: ${addon.path} (${addon.source === "checkout" ? "this checkout's build" : `from ${addon.source}`})`);
    const available = native.cudaIsAvailable();
    lines.push(`- CUDA available: ${available ? `yes, ${native.cudaDeviceCount()} device(s)` : "no"}`);
    if (available) {
      // Integers as the libraries report them: CUDA 13000 = 13.0, cuDNN 91900 = 9.19.0, NCCL 22809 = 2.28.9.
      const v = native.cudaVersions();
      const dotted = (n: number, parts: number[]) => parts.map((d, i) => Math.floor(n / d) % (i === 0 ? Infinity : parts[i - 1] / d)).join(".");
      lines.push(
        `- CUDA runtime ${dotted(v.cuda, [1000, 10])}, cuDNN ${v.cudnn ? dotted(v.cudnn, [10000, 100, 1]) : "none"}, NCCL ${v.nccl ? dotted(v.nccl, [10000, 100, 1]) : "none"}`,
      );
      for (let i = 0; i < native.cudaDeviceCount(); i++) {
        const info = native.cudaDeviceInfo(i);
        lines.push(`  cuda:${i} ${info.name}, ${(info.totalMemory / 2 ** 30).toFixed(1)} GiB`);
      }
    }
  } catch (error) {
    lines.push(`- native addon: could not load: ${(error as Error).message}`);
  }
  return lines;
}

export default defineCommand({
  meta: { name: "env", description: "Print versions, libtorch location, CUDA and config file (for bug reports)" },
  args: { config_file: { type: "string", valueHint: "PATH", description: "Config file to show (default: $HF_HOME/accelerate/default_config.yaml)" } },
  async run({ args }) {
    const { version } = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string };
    const configPath = args.config_file || defaultConfigPath();
    const lines = [
      "Copy-and-paste the text below in your GitHub issue",
      "",
      `- accelerate-ts version: ${version}`,
      `- Node.js version: ${process.version}`,
      `- Platform: ${process.platform} ${process.arch} (kernel ${release()})`,
      `- CPUs: ${availableParallelism()}, RAM: ${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
      ...(await libtorchLines()),
      `- Config file: ${configPath}${existsSync(configPath) ? "" : " (not found)"}`,
    ];
    if (existsSync(configPath)) {
      lines.push(...readFileSync(configPath, "utf8").trimEnd().split("\n").map((line) => `\t${line}`));
    }
    process.stdout.write(`${lines.join("\n")}\n`);
  },
});
