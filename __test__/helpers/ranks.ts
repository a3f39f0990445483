// Starts a script on N local processes the way `accelerate launch` does (rank
// environment on loopback), and collects each rank's exit code and output.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

export interface RankResult {
  rank: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Whether a server can listen on `port` of 127.0.0.1 now. */
function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

// The next port to try: from a random start in each test process, then one after another.
let nextPort = Math.floor(Math.random() * 12_000);

/**
 * A port that was free a moment ago, below Linux's ephemeral range (32768-60999): one the
 * kernel hands out for listen(0) or an outgoing connection could be given to another test's
 * processes (gloo's connections between ranks, say) before the rendezvous binds it.
 */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 1000; tries++) {
    const port = 20_000 + (nextPort++ % 12_000);
    if (await canListen(port)) return port;
  }
  throw new Error("freePort: no free port in 20000-31999");
}

export async function runRanks(script: string, worldSize: number, args: string[] = [], timeoutMs = 60_000): Promise<RankResult[]> {
  const port = await freePort();
  const path = fileURLToPath(new URL(script, import.meta.url));
  return Promise.all(
    Array.from({ length: worldSize }, (_, rank) =>
      new Promise<RankResult>((resolve) => {
        const child = spawn(process.execPath, ["--import", "@oxc-node/core/register", path, ...args], {
          env: {
            ...process.env,
            RANK: String(rank),
            LOCAL_RANK: String(rank),
            WORLD_SIZE: String(worldSize),
            LOCAL_WORLD_SIZE: String(worldSize),
            MASTER_ADDR: "127.0.0.1",
            MASTER_PORT: String(port),
            OMP_NUM_THREADS: "1",
          },
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        child.on("close", (code) => {
          clearTimeout(timer);
          resolve({ rank, code, stdout, stderr });
        });
      }),
    ),
  );
}

/** The JSON on a run's last output line (a `[rank N] ` prefix from the launcher is dropped). */
export function lastJson(stdout: string): any {
  return JSON.parse((stdout.trim().split("\n").pop() ?? "{}").replace(/^\[rank \d+\] /, ""));
}

/** The largest absolute difference per parameter between two `{ name: values }` records. */
export function worstDifferences(expected: Record<string, number[]>, actual: Record<string, number[]>): [string, number][] {
  return Object.entries(expected).map(([name, values]) => [name, Math.max(...values.map((v, i) => Math.abs(v - actual[name][i])))]);
}
