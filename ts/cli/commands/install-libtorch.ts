// `accelerate install-libtorch`: installs the torch 2.11 wheel (CPU or CUDA 13) into
// a virtualenv in accelerate-ts's cache, where the package looks for libtorch at import.
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { defineCommand } from "citty";
import { consola } from "consola";
import { TORCH_VERSION, cachedVirtualenv, findLibtorch } from "../../libtorch.js";

const WHO = "accelerate install-libtorch";
/** pip's extra arguments per build: the CPU build lives on PyTorch's index; PyPI's default is built for CUDA 13. */
const VARIANT_ARGS = { cpu: ["--index-url", "https://download.pytorch.org/whl/cpu"], cuda: [] } as const;
type Variant = keyof typeof VARIANT_ARGS;

const hasNvidiaGpu = (): boolean => spawnSync("nvidia-smi", ["-L"], { stdio: "ignore" }).status === 0;

function run(command: string, args: string[], dryRun: boolean): void {
  consola.log(`$ ${command} ${args.join(" ")}`);
  if (dryRun) return;
  const result = spawnSync(command, args, { stdio: "inherit" });
  if (result.status !== 0) {
    const why = result.error ? result.error.message : `exit code ${result.status ?? result.signal}`;
    throw new Error(
      `${WHO}: \`${command} ${args.join(" ")}\` failed (${why}). It needs python3 with the venv module and access to PyPI ` +
        "(and download.pytorch.org for --variant cpu); or install torch yourself and set LIBTORCH to its directory.",
    );
  }
}

export default defineCommand({
  meta: { name: "install-libtorch", description: `Install libtorch ${TORCH_VERSION} (the torch wheel) into accelerate-ts's cache` },
  args: {
    variant: { type: "string", valueHint: "cpu|cuda", description: "cpu or cuda (CUDA 13, about 3.7 GB installed); default: cuda when nvidia-smi sees a GPU" },
    force: { type: "boolean", description: `Install even when a libtorch ${TORCH_VERSION} is already found` },
    dry_run: { type: "boolean", description: "Print the commands without running them" },
  },
  run({ args }) {
    const dryRun = args.dry_run === true;
    if (!args.force) {
      try {
        const found = findLibtorch();
        consola.success(`${WHO}: libtorch ${found.version ?? TORCH_VERSION} is already available at ${found.dir} (found through ${found.source}); nothing to do (--force installs anyway)`);
        return;
      } catch {
        // None found: install one.
      }
    }
    const variant = args.variant || (hasNvidiaGpu() ? "cuda" : "cpu");
    if (!(variant in VARIANT_ARGS)) throw new Error(`${WHO}: --variant must be cpu or cuda, got "${variant}"`);
    const venv = cachedVirtualenv();
    if (!dryRun) mkdirSync(dirname(venv), { recursive: true });
    run("python3", ["-m", "venv", venv], dryRun);
    const reinstall = args.force ? ["--force-reinstall"] : [];
    const pipArgs = ["install", "--no-input", "--disable-pip-version-check", ...reinstall, `torch==${TORCH_VERSION}`, ...VARIANT_ARGS[variant as Variant]];
    run(join(venv, "bin", "pip"), pipArgs, dryRun);
    if (dryRun) return;
    // The same marker a checkout's `npm run setup` writes when it has filled this virtualenv.
    writeFileSync(join(venv, ".complete"), `${new Date().toISOString()}\n`);
    const found = findLibtorch();
    consola.success(`${WHO}: installed into ${venv}; accelerate-ts now loads libtorch ${found.version ?? TORCH_VERSION} from ${found.dir} (found through ${found.source})`);
  },
});
