// Loads the native addon (after libtorch) and exposes it with its generated types.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type * as Binding from "../index.js";
import { findLibtorch, preloadLibtorch, type LibtorchLocation } from "./libtorch.js";

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const platform = `${process.platform}-${process.arch}${process.platform === "linux" ? "-gnu" : ""}`;

function addonPath(): string {
  const local = join(packageRoot, `accelerate.${platform}.node`);
  if (existsSync(local)) return local;
  try {
    return require.resolve(`accelerate-ts-${platform}`);
  } catch {
    throw new Error(
      `accelerate-ts: no native addon for ${platform}. Looked for ${local} and the package accelerate-ts-${platform}. ` +
        "In a checkout, run `npm run setup` to build it.",
    );
  }
}

// The CUDA caching allocator reads this when it starts. Expandable segments fragment
// less than fixed ones (measured on the GPT workload: a lower peak than PyTorch's
// default), so they are our default; a value the user set, under either name, wins.
if (process.env.PYTORCH_ALLOC_CONF === undefined && process.env.PYTORCH_CUDA_ALLOC_CONF === undefined) {
  process.env.PYTORCH_ALLOC_CONF = "expandable_segments:True";
}

export const libtorch: LibtorchLocation = findLibtorch();
preloadLibtorch(libtorch);

export const native: typeof Binding = require(addonPath());

