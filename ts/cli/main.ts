#!/usr/bin/env node
// The `accelerate` command: subcommands config, launch, env, test, estimate-memory, merge-weights and install-libtorch.
// The installed package runs its compiled form directly; a checkout runs it through ts/cli/bin.mjs.
import { restoreHiddenEnv } from "./color.js";
import { readFileSync } from "node:fs";
import { defineCommand, runCommand, runMain } from "citty";
import { consola, LogLevels } from "consola";
import { launchArgs } from "./commands/launch.js";
import { splitLaunchArgv } from "./launch-argv.js";

restoreHiddenEnv();

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

export const accelerate = defineCommand({
  meta: { name: "accelerate", version, description: "Configure and launch accelerate-ts training runs" },
  subCommands: {
    config: () => import("./commands/config.js").then((m) => m.default),
    launch: () => import("./commands/launch.js").then((m) => m.default),
    env: () => import("./commands/env.js").then((m) => m.default),
    test: () => import("./commands/test.js").then((m) => m.default),
    "estimate-memory": () => import("./commands/estimate-memory.js").then((m) => m.default),
    "merge-weights": () => import("./commands/merge-weights.js").then((m) => m.default),
    "install-libtorch": () => import("./commands/install-libtorch.js").then((m) => m.default),
  },
});

/** The arguments that are the CLI's own: for `launch`, those before the script. */
function ownArgs(rawArgs: string[]): string[] {
  if (rawArgs[0] !== "launch") return rawArgs;
  try {
    return ["launch", ...splitLaunchArgv(rawArgs.slice(1), launchArgs).launcherArgs];
  } catch {
    return rawArgs;
  }
}

export async function main(rawArgs: string[]): Promise<void> {
  // consola drops to warnings under a test runner (NODE_ENV=test); a CLI's results must always print.
  if (process.env.CONSOLA_LEVEL === undefined) consola.level = Math.max(consola.level, LogLevels.info);
  const own = ownArgs(rawArgs);
  const wantsHelp = own.some((arg) => arg === "--help" || arg === "-h");
  const wantsVersion = own.length === 1 && (own[0] === "--version" || own[0] === "-v");
  if (wantsHelp || wantsVersion || own.length === 0) {
    // citty prints usage or the version (and exits).
    await runMain(accelerate, { rawArgs: own.length === 0 ? ["--help"] : own });
    return;
  }
  try {
    await runCommand(accelerate, { rawArgs });
  } catch (error) {
    const err = error instanceof Error ? error : new Error(String(error));
    consola.error(err.message);
    if (err.name === "CLIError") consola.info("run `accelerate --help` or `accelerate <command> --help` for usage");
    if (process.env.ACCELERATE_DEBUG_MODE === "1" && err.stack) consola.log(err.stack);
    process.exitCode = 1;
  }
}

await main(process.argv.slice(2));
