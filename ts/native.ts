// Loads the native addon (after libtorch) and exposes it with its generated types.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type * as Binding from "../index.js";
import { findLibtorch, preloadLibtorch, type LibtorchLocation } from "./libtorch.js";

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const { version } = require("../package.json") as { version: string };

/** Set to a `.node` file to load it instead of the prebuilt one (a build of your own, a debug build). */
export const ADDON_PATH_VARIABLE = "ACCELERATE_TS_NATIVE_LIBRARY_PATH";
/** The platforms with a prebuilt package on npm (`accelerate-ts-<platform>`). */
export const PREBUILT_PLATFORMS = ["linux-x64-gnu"] as const;

export interface AddonLocation {
  path: string;
  /** How it was found: the override variable, a checkout's own build, or the platform package's name. */
  source: typeof ADDON_PATH_VARIABLE | "checkout" | `accelerate-ts-${string}`;
}

function isMusl(): boolean {
  const report = process.report.getReport() as { header?: { glibcVersionRuntime?: string } };
  return report.header?.glibcVersionRuntime === undefined;
}

/** napi-rs's platform names: linux-x64-gnu, linux-arm64-gnu, darwin-arm64, ... */
export function platformName(): string {
  if (process.platform === "linux") return `linux-${process.arch}-${isMusl() ? "musl" : "gnu"}`;
  return `${process.platform}-${process.arch}`;
}

function noAddon(platform: string, looked: string): Error {
  const prebuilt = (PREBUILT_PLATFORMS as readonly string[]).includes(platform);
  const fix = prebuilt
    ? `The optional dependency accelerate-ts-${platform} is not installed (npm skips it with --omit=optional, or when the lockfile was made on another platform): ` +
      `run \`npm install accelerate-ts-${platform}@${version}\`.`
    : `accelerate-ts ${version} has prebuilt addons for ${PREBUILT_PLATFORMS.join(", ")} only. ` +
      `Build one from a clone (\`npm run setup\`) and set ${ADDON_PATH_VARIABLE} to the .node file it writes.`;
  return new Error(`accelerate-ts: no native addon for this platform, ${platform} (Node ${process.version}). Looked for ${looked}. ${fix}`);
}

/** The override variable, else a checkout's own build, else the platform package. */
export function findAddon(): AddonLocation {
  const override = process.env[ADDON_PATH_VARIABLE];
  if (override) {
    const path = resolve(override);
    if (!existsSync(path)) throw new Error(`accelerate-ts: ${ADDON_PATH_VARIABLE}=${override}, but there is no file at ${path}; unset it or point it at a .node file`);
    return { path, source: ADDON_PATH_VARIABLE };
  }
  const platform = platformName();
  const local = join(packageRoot, `accelerate.${platform}.node`);
  if (existsSync(local)) return { path: local, source: "checkout" };
  const packageName = `accelerate-ts-${platform}` as const;
  try {
    return { path: require.resolve(packageName), source: packageName };
  } catch {
    throw noAddon(platform, `${local} and the package ${packageName}`);
  }
}

// The CUDA caching allocator reads this when it starts. Expandable segments fragment
// less than fixed ones (measured on the GPT workload: a lower peak than PyTorch's
// default), so they are our default; a value the user set, under either name, wins.
if (process.env.PYTORCH_ALLOC_CONF === undefined && process.env.PYTORCH_CUDA_ALLOC_CONF === undefined) {
  process.env.PYTORCH_ALLOC_CONF = "expandable_segments:True";
}

export const addon: AddonLocation = findAddon();
export const libtorch: LibtorchLocation = findLibtorch();
preloadLibtorch(libtorch);

export const native: typeof Binding = require(addon.path);
