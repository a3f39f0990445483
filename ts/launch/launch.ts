// Launches one machine's share of a run: resolves the rendezvous port (checking
// it is free, or picking one), builds each local rank's environment and command,
// and supervises the ranks. Shared by `accelerate launch`, `accelerate test` and notebookLauncher.
import { existsSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { checkPlan, localProcessCount, masterAddress, rankEnvironment, type LaunchPlan } from "./plan.js";
import { checkPortFree, pickFreePort } from "./port.js";
import { superviseRanks, type RankCommand, type RunOutcome } from "./supervisor.js";

export interface LaunchOptions {
  /** What to tell the user to do about a busy port, e.g. "pass --main_process_port 0 to pick a free one". */
  portHint: string;
  /** Told about things worth a warning (an unverifiable port). */
  warn?: (message: string) => void;
  /** Environment the ranks inherit (default process.env). */
  baseEnv?: NodeJS.ProcessEnv;
  /** Forward SIGINT/SIGTERM/SIGHUP to the ranks (default true). */
  forwardSignals?: boolean;
  graceMs?: number;
}

export interface LaunchResult extends RunOutcome {
  /** MASTER_PORT the ranks got (the picked one when the plan said 0). */
  port: number;
}

/** The module that lets a rank run TypeScript; it sits beside this file in ts/ and in dist/. */
const typescriptRegister = new URL("./typescript-register.mjs", import.meta.url).href;

/** `node --import <typescript hooks> script args`: runs .ts, .mts, .js and .mjs scripts alike, from any folder. */
export function nodeCommand(script: string, args: string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ["--import", typescriptRegister, script, ...args] };
}

/** The absolute path of `script`, or an Error saying where it was looked for. */
export function resolveScript(script: string, who: string): string {
  const path = resolve(script);
  if (!existsSync(path) || !statSync(path).isFile()) throw new Error(`${who}: script ${script} not found (looked for ${path})`);
  return path;
}

/**
 * Starts this machine's ranks of `plan`, each running `commandFor(localRank)`,
 * and resolves when all have exited (or were stopped after the first failure).
 */
export async function launchRanks(
  plan: LaunchPlan,
  commandFor: (localRank: number) => { command: string; args: string[] },
  options: LaunchOptions,
): Promise<LaunchResult> {
  checkPlan(plan);
  const host = masterAddress(plan);
  let port = plan.mainProcessPort;
  if (port === 0) {
    port = await pickFreePort(host);
  } else if (plan.numProcesses > 1 && plan.machineRank === 0) {
    // Rank 0 will host the rendezvous store here; failing now beats N ranks timing out later.
    const warning = await checkPortFree(host, port, options.portHint);
    if (warning !== undefined) options.warn?.(warning);
  }
  const local = localProcessCount(plan);
  const ranks: RankCommand[] = [];
  for (let localRank = 0; localRank < local; localRank++) {
    const env = rankEnvironment(plan, localRank, port, options.baseEnv ?? process.env);
    ranks.push({ rank: Number(env.RANK), env, ...commandFor(localRank) });
  }
  const single = plan.numProcesses === 1;
  const outcome = await superviseRanks(ranks, {
    // One process alone keeps the terminal (colours, progress bars, stdin) and needs no prefix.
    prefixOutput: !single,
    inheritStdin: single,
    forwardSignals: options.forwardSignals ?? true,
    graceMs: options.graceMs,
  });
  return { ...outcome, port };
}
