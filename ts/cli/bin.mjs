#!/usr/bin/env node
// The `accelerate` executable: registers the TypeScript loader (resolved from
// this package's own node_modules, wherever the command is run from) and runs
// ts/cli/main.ts in this same process, so signals reach the launcher directly.
await import(import.meta.resolve("@oxc-node/core/register"));
await import(new URL("./main.ts", import.meta.url).href);
