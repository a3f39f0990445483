// Whether the CLI writes ANSI colours: only to a terminal, never when NO_COLOR is
// set, always when FORCE_COLOR is (not "0"). Imported first by main.ts, because
// consola and citty decide once, when they load, from NO_COLOR and FORCE_COLOR.

/** The CLI's colour decision for `stream` under `env`. */
export function useColor(env: NodeJS.ProcessEnv = process.env, stream: { isTTY?: boolean } = process.stdout): boolean {
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== "0" && env.FORCE_COLOR !== "false") return true;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  return stream.isTTY === true && env.TERM !== "dumb";
}

const userEnv = { NO_COLOR: process.env.NO_COLOR, FORCE_COLOR: process.env.FORCE_COLOR };
// citty never colours when CI, TEST or TERM=dumb is set: hidden while it loads (after
// this module, before main.ts's body), then put back by restoreHiddenEnv().
const hidden: NodeJS.ProcessEnv = {};
if (useColor()) {
  delete process.env.NO_COLOR;
  for (const key of ["CI", "TEST", "TERM"] as const) {
    if (process.env[key] === undefined || (key === "TERM" && process.env.TERM !== "dumb")) continue;
    hidden[key] = process.env[key];
    delete process.env[key];
  }
} else {
  process.env.NO_COLOR = "1";
  // consola would still colour under CI or FORCE_COLOR=0.
  delete process.env.FORCE_COLOR;
}

/** NO_COLOR and FORCE_COLOR as the user set them, for the ranks (which decide for themselves). */
export function colorEnvForRanks(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of ["NO_COLOR", "FORCE_COLOR"] as const) {
    if (userEnv[key] === undefined) delete env[key];
    else env[key] = userEnv[key];
  }
  return env;
}

/** Puts back what was hidden from citty while it loaded; main.ts calls it first thing. */
export function restoreHiddenEnv(): void {
  Object.assign(process.env, hidden);
}
