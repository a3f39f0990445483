// Splits `accelerate launch [flags] script [script args]`: flags before the
// script belong to the launcher, everything after it to the script untouched
// (so a script's own --help or --mixed_precision never reaches the launcher).
import type { ArgsDef } from "citty";
import { suggestName } from "../errors.js";

export interface SplitLaunchArgv {
  /** The launcher's own flags, each as `--name=value` or `--name` / `--no-name`. */
  launcherArgs: string[];
  script: string | undefined;
  scriptArgs: string[];
}

const HELP = new Set(["-h", "--help"]);

/** Throws an Error naming an unknown launcher flag (a typo would otherwise be taken for the script). */
export function splitLaunchArgv(rawArgs: string[], argsDef: ArgsDef, who = "accelerate launch"): SplitLaunchArgv {
  const valueFlags = new Set(Object.entries(argsDef).filter(([, def]) => def.type === "string" || def.type === "enum").map(([name]) => name));
  const switches = new Set(Object.entries(argsDef).filter(([, def]) => def.type === "boolean").map(([name]) => name));
  const launcherArgs: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const token = rawArgs[i];
    if (token === "--") return { launcherArgs, script: rawArgs[i + 1], scriptArgs: rawArgs.slice(i + 2) };
    if (!token.startsWith("-") || token === "-") return { launcherArgs, script: token, scriptArgs: rawArgs.slice(i + 1) };
    if (HELP.has(token)) {
      launcherArgs.push(token);
      continue;
    }
    const [spelled, inlineValue] = token.replace(/^--?/, "").split(/=(.*)/s, 2);
    const name = spelled.replace(/-/g, "_");
    if (valueFlags.has(name)) {
      const value = inlineValue ?? rawArgs[++i];
      if (value === undefined) throw new Error(`${who}: --${name} needs a value`);
      launcherArgs.push(`--${name}=${value}`);
    } else if (switches.has(name) && inlineValue === undefined) {
      launcherArgs.push(`--${name}`);
    } else if (name.startsWith("no_") && switches.has(name.slice(3)) && inlineValue === undefined) {
      launcherArgs.push(`--no-${name.slice(3)}`);
    } else {
      const suggestion = suggestName(name, [...valueFlags, ...switches]);
      throw new Error(`${who}: unknown option ${token}${suggestion ? ` (did you mean --${suggestion}?)` : ""}; options go before the script, the script's own arguments after it`);
    }
  }
  return { launcherArgs, script: undefined, scriptArgs: [] };
}
