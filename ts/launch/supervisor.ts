// Starts the ranks of one machine and watches them: prefixes their output,
// forwards SIGINT/SIGTERM, and when one rank fails stops the others (SIGTERM,
// then SIGKILL after a grace period) so that nothing outlives the run.
import { spawn, type ChildProcess } from "node:child_process";
import { constants } from "node:os";
import { pipeLines } from "./lines.js";

export interface RankCommand {
  /** Global rank, used in output prefixes and failure reports. */
  rank: number;
  command: string;
  args: string[];
  env: Record<string, string>;
}

export interface RankFailure {
  rank: number;
  pid: number | undefined;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be started at all. */
  spawnError?: string;
}

export interface RunOutcome {
  /** The first rank that exited non-zero or by a signal, unless the run was interrupted. */
  failure?: RankFailure;
  /** The signal (SIGINT/SIGTERM/SIGHUP) that interrupted the run, forwarded to the ranks. */
  interrupted?: NodeJS.Signals;
}

export interface SupervisorOptions {
  /** Prefix each output line with `[rank N] ` (otherwise the ranks write to our stdout/stderr directly). */
  prefixOutput: boolean;
  /** Time between SIGTERM and SIGKILL when stopping ranks after a failure (default 5 s). */
  graceMs?: number;
  /** Time ranks get to exit after a forwarded SIGINT/SIGTERM (to save a checkpoint, say) before SIGKILL (default 30 s, as torchrun). */
  interruptGraceMs?: number;
  /** Forward SIGINT/SIGTERM/SIGHUP received by this process to the ranks (listeners are removed afterwards). */
  forwardSignals?: boolean;
  /** Give the ranks our stdin (only sensible for a single rank). */
  inheritStdin?: boolean;
}

const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
/** How long to wait for a rank's output pipes to drain after it exited (a grandchild may hold them open). */
const DRAIN_MS = 1000;

export function describeFailure(failure: RankFailure): string {
  const who = `rank ${failure.rank}${failure.pid === undefined ? "" : ` (pid ${failure.pid})`}`;
  if (failure.spawnError !== undefined) return `${who} could not be started: ${failure.spawnError}`;
  if (failure.signal !== null) return `${who} was killed by signal ${failure.signal}`;
  return `${who} exited with code ${failure.exitCode}`;
}

/** The exit code a launcher should end with: the rank's code, or 128 + signal number as a shell reports it. */
export function exitCodeOf(outcome: RunOutcome): number {
  const signal = outcome.interrupted ?? outcome.failure?.signal ?? null;
  if (signal !== null) return 128 + (constants.signals[signal] ?? 0);
  if (outcome.failure) return outcome.failure.exitCode && outcome.failure.exitCode > 0 ? outcome.failure.exitCode : 1;
  return 0;
}

/** Sends `signal` to the rank's whole process group (it leads its own), so its children go too. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Group already gone.
  }
}

export function superviseRanks(ranks: RankCommand[], options: SupervisorOptions): Promise<RunOutcome> {
  const graceMs = options.graceMs ?? 5000;
  const interruptGraceMs = options.interruptGraceMs ?? 30_000;
  return new Promise((resolve) => {
    const outcome: RunOutcome = {};
    const children: ChildProcess[] = [];
    const exited = new Set<ChildProcess>();
    let stopping = false;
    let killTimer: NodeJS.Timeout | undefined;
    let remaining = ranks.length;

    const signalRunning = (signal: NodeJS.Signals): void => {
      for (const child of children) if (!exited.has(child)) signalGroup(child, signal);
    };
    const stopAll = (signal: NodeJS.Signals, grace: number): void => {
      if (stopping) return;
      stopping = true;
      signalRunning(signal);
      killTimer = setTimeout(() => signalRunning("SIGKILL"), grace);
    };
    const onSignal = (signal: NodeJS.Signals): void => {
      if (outcome.interrupted !== undefined || stopping) {
        // A second interrupt: stop waiting for a graceful exit.
        signalRunning("SIGKILL");
        return;
      }
      outcome.interrupted = signal;
      stopAll(signal, interruptGraceMs);
    };
    if (options.forwardSignals) for (const signal of FORWARDED_SIGNALS) process.on(signal, onSignal);
    // If this process dies (uncaught error, process.exit), its ranks, in their own sessions, must not live on.
    const onExit = (): void => signalRunning("SIGKILL");
    process.on("exit", onExit);
    // A reader that went away (`accelerate launch ... | head`) must not kill the launcher mid-run.
    const ignoreWriteError = (): void => {};
    if (options.prefixOutput) for (const stream of [process.stdout, process.stderr]) stream.on("error", ignoreWriteError);

    const finish = (): void => {
      if (killTimer) clearTimeout(killTimer);
      if (options.forwardSignals) for (const signal of FORWARDED_SIGNALS) process.off(signal, onSignal);
      process.off("exit", onExit);
      if (options.prefixOutput) for (const stream of [process.stdout, process.stderr]) stream.off("error", ignoreWriteError);
      // Anything a failed run's ranks left behind in their groups goes too.
      if (stopping) for (const child of children) signalGroup(child, "SIGKILL");
      resolve(outcome);
    };
    const settled = (): void => {
      remaining -= 1;
      if (remaining === 0) finish();
    };
    const recordFailure = (failure: RankFailure): void => {
      if (stopping || outcome.failure) return;
      outcome.failure = failure;
      stopAll("SIGTERM", graceMs);
    };

    for (const rank of ranks) {
      const child = spawn(rank.command, rank.args, {
        env: rank.env,
        // Its own process group: a Ctrl-C on the terminal reaches only us, and we forward it exactly once.
        detached: true,
        stdio: [options.inheritStdin ? "inherit" : "ignore", options.prefixOutput ? "pipe" : "inherit", options.prefixOutput ? "pipe" : "inherit"],
      });
      children.push(child);
      const prefix = `[rank ${rank.rank}] `;
      let streamsOpen = 0;
      let exitSeen = false;
      let done = false;
      let drainTimer: NodeJS.Timeout | undefined;
      const maybeDone = (): void => {
        if (done || !exitSeen || streamsOpen > 0) return;
        done = true;
        if (drainTimer) clearTimeout(drainTimer);
        settled();
      };
      if (options.prefixOutput && child.stdout && child.stderr) {
        for (const [source, target] of [[child.stdout, process.stdout], [child.stderr, process.stderr]] as const) {
          streamsOpen += 1;
          pipeLines(source, target, prefix);
          source.once("close", () => {
            streamsOpen -= 1;
            maybeDone();
          });
        }
      }
      child.once("error", (error) => {
        // Spawning failed: no "exit" follows.
        exited.add(child);
        recordFailure({ rank: rank.rank, pid: child.pid, exitCode: null, signal: null, spawnError: error.message });
        child.stdout?.destroy();
        child.stderr?.destroy();
        streamsOpen = 0;
        exitSeen = true;
        maybeDone();
      });
      child.once("exit", (code, signal) => {
        exited.add(child);
        if (code !== 0) recordFailure({ rank: rank.rank, pid: child.pid, exitCode: code, signal });
        exitSeen = true;
        if (streamsOpen > 0) {
          drainTimer = setTimeout(() => {
            child.stdout?.destroy();
            child.stderr?.destroy();
            streamsOpen = 0;
            maybeDone();
          }, DRAIN_MS);
        }
        maybeDone();
      });
    }
  });
}
