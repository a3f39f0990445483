// The rendezvous port: checking that it is free before starting ranks, and picking a free one.
import { createServer } from "node:net";

/** Listens on host:port and closes again; resolves the port actually bound, rejects with the listen error. */
function probe(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host, port, exclusive: true }, () => {
      const address = server.address();
      const bound = typeof address === "object" && address !== null ? address.port : port;
      server.close(() => resolve(bound));
    });
  });
}

export class PortInUseError extends Error {
  constructor(
    readonly host: string,
    readonly port: number,
    hint: string,
  ) {
    super(`port ${port} on ${host} is already in use; ${hint}`);
    this.name = "PortInUseError";
  }
}

/**
 * Throws PortInUseError when something listens on host:port. Other listen errors
 * (an address that is not this machine's) are returned as a warning string: the
 * rendezvous itself will report them if they matter.
 */
export async function checkPortFree(host: string, port: number, hint: string): Promise<string | undefined> {
  try {
    await probe(host, port);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new PortInUseError(host, port, hint);
    if (code === "EACCES") throw new Error(`port ${port} on ${host} needs privileges to listen on; choose a port above 1023`);
    return `could not check port ${port} on ${host}: ${(error as Error).message}`;
  }
}

/** A port that was free on `host` a moment ago. */
export function pickFreePort(host: string): Promise<number> {
  return probe(host, 0);
}
