// @ts-check
// Node module hooks that run a TypeScript script from any folder with nothing
// installed beside it. TypeScript's own transpiler turns `.ts`/`.mts` into
// JavaScript for Node 20 (class fields stay native; decorators and `using` get
// inline helpers, so the output imports nothing from the script's folder),
// `./x.js` finds `./x.ts` as tsc resolves it, and a bare `accelerate-ts` that the
// script's folder cannot resolve is this copy of the package. Transpiled code is
// cached on disk by content, so the transpiler loads only for a file it has not seen.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);

/** Where this package's entry point is: compiled (`dist/index.js`) or, in a checkout, `ts/index.ts`. */
function packageEntry() {
  const compiled = new URL("../index.js", import.meta.url);
  return existsSync(fileURLToPath(compiled)) ? compiled.href : new URL("../index.ts", import.meta.url).href;
}

/**
 * `./model.js` written in a .ts file means `./model.ts` when only that exists (tsc's rule).
 * @param {string} specifier
 * @param {string | undefined} parentURL
 */
function typescriptSibling(specifier, parentURL) {
  const javascript = /\.(m?)js$/.exec(specifier);
  if (parentURL === undefined || javascript === null || !/^\.{1,2}\//.test(specifier)) return undefined;
  const candidate = new URL(`${specifier.slice(0, javascript.index)}.${javascript[1]}ts`, parentURL);
  return existsSync(fileURLToPath(candidate)) ? candidate.href : undefined;
}

/** @type {import("node:module").ResolveHook} */
export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    if (/** @type {NodeJS.ErrnoException} */ (error).code !== "ERR_MODULE_NOT_FOUND") throw error;
    const fallback = specifier === "accelerate-ts" ? packageEntry() : typescriptSibling(specifier, context.parentURL);
    if (fallback === undefined) throw error;
    return nextResolve(fallback, context);
  }
}

function cacheDir() {
  const root = process.env.ACCELERATE_TS_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "accelerate-ts");
  return join(root, "transpiled");
}

const typescriptVersion = () => /** @type {{ version: string }} */ (require("typescript/package.json")).version;

/**
 * TypeScript → JavaScript (ES2022, ESM) with an inline source map; throws naming the file and line on a syntax error.
 * @param {string} path
 * @param {string} source
 */
function transpile(path, source) {
  /** @type {typeof import("typescript")} */
  const ts = require("typescript");
  const output = ts.transpileModule(source, {
    fileName: path,
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      inlineSourceMap: true,
      inlineSources: true,
    },
  });
  const error = output.diagnostics?.find((d) => d.category === ts.DiagnosticCategory.Error);
  if (error) {
    const where = error.file && error.start !== undefined ? error.file.getLineAndCharacterOfPosition(error.start) : undefined;
    const line = where ? `:${where.line + 1}:${where.character + 1}` : "";
    throw new SyntaxError(`accelerate-ts: cannot run ${path}${line}: ${ts.flattenDiagnosticMessageText(error.messageText, "\n")}`);
  }
  return output.outputText;
}

/**
 * The transpiled module, from the cache when this exact source was seen before.
 * @param {string} path
 * @param {string} source
 */
function cachedTranspile(path, source) {
  const key = createHash("sha256").update(`${typescriptVersion()}\0${path}\0${source}`).digest("hex");
  const file = join(cacheDir(), `${key}.mjs`);
  if (existsSync(file)) return readFileSync(file, "utf8");
  const code = transpile(path, source);
  try {
    mkdirSync(dirname(file), { recursive: true });
    // Write then rename: ranks transpiling the same file at once never read half a file.
    const partial = `${file}.${process.pid}.partial`;
    writeFileSync(partial, code);
    renameSync(partial, file);
  } catch {
    // An unwritable cache only costs speed.
  }
  return code;
}

/** @type {import("node:module").LoadHook} */
export async function load(url, context, nextLoad) {
  if (!url.startsWith("file:")) return nextLoad(url, context);
  const path = fileURLToPath(url);
  if (path.endsWith(".cts")) {
    throw new Error(`accelerate-ts: cannot run ${path}: CommonJS TypeScript (.cts) is not supported; rename it to .ts or .mts (ES module)`);
  }
  if (!path.endsWith(".ts") && !path.endsWith(".mts")) return nextLoad(url, context);
  return { format: "module", source: cachedTranspile(path, readFileSync(path, "utf8")), shortCircuit: true };
}

