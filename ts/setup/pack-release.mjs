#!/usr/bin/env node
// Packs what `npm publish` would publish, the napi-rs way, into a folder: one
// platform package per native addon built here (`napi artifacts`: the .node into
// a copy of npm/<platform>/) and the root package, whose package.json gains an
// optionalDependency on each of them (what `napi prepublish` writes), and whose
// binding types point at dist/ instead of ts/. The checkout itself is not
// modified. `napi artifacts` and `napi prepublish` themselves refuse to run
// unless every target in napi.targets is built ("Missing artifacts for configured
// targets: aarch64-unknown-linux-gnu ..."), and here only linux-x64-gnu is, so
// this script takes their two steps for the targets that are. Plain JS, like provision.mjs.
//   node ts/setup/pack-release.mjs OUT_DIR    prints the tarballs' paths as JSON
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** Fields that only matter inside the checkout. */
const DEVELOPMENT_FIELDS = ["scripts", "devDependencies", "ava"];

function run(command, args, cwd) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (result.status !== 0) {
    throw new Error(`pack-release: \`${command} ${args.join(" ")}\` in ${cwd} failed (${result.error?.message ?? `exit code ${result.status}`})`);
  }
  return result.stdout;
}

/** `npm pack` of `dir` into `outDir`; returns the tarball's path. */
function pack(dir, outDir) {
  const [info] = JSON.parse(run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", outDir], dir));
  return join(outDir, info.filename);
}

/** A `files` entry as paths: `dir/*.ext` is the files of dir ending in .ext; anything else is itself. */
function expand(entry) {
  const star = entry.indexOf("*");
  if (star < 0) return [entry];
  const dir = entry.slice(0, entry.lastIndexOf("/", star) + 1);
  const suffix = entry.slice(star + 1);
  return readdirSync(join(root, dir)).filter((name) => name.endsWith(suffix)).map((name) => `${dir}${name}`);
}

function main() {
  const outArg = process.argv[2];
  if (!outArg) throw new Error("pack-release: usage: node ts/setup/pack-release.mjs OUT_DIR");
  const outDir = resolve(outArg);
  const stage = join(outDir, "stage");
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });

  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const { binaryName } = manifest.napi;
  const platforms = readdirSync(join(root, "npm")).filter((platform) => existsSync(join(root, `${binaryName}.${platform}.node`)));
  if (platforms.length === 0) throw new Error(`pack-release: no ${binaryName}.<platform>.node in ${root}; run \`npm run setup\` first`);

  const tarballs = [];
  for (const platform of platforms) {
    const dir = join(stage, platform);
    cpSync(join(root, "npm", platform), dir, { recursive: true });
    cpSync(join(root, `${binaryName}.${platform}.node`), join(dir, `${binaryName}.${platform}.node`));
    tarballs.push(pack(dir, outDir));
  }

  run("npm", ["run", "build"], root);
  const rootStage = join(stage, "root");
  mkdirSync(rootStage);
  for (const file of [...manifest.files.flatMap(expand), "README.md"]) cpSync(join(root, file), join(rootStage, file), { recursive: true });
  // The generated binding types import the checkout's sources (./ts/tensor.js); the package ships their compiled .d.ts.
  const bindingTypes = join(rootStage, "index.d.ts");
  writeFileSync(bindingTypes, readFileSync(bindingTypes, "utf8").replaceAll('from "./ts/', 'from "./dist/'));
  for (const field of DEVELOPMENT_FIELDS) delete manifest[field];
  manifest.optionalDependencies = Object.fromEntries(platforms.map((platform) => [`${manifest.name}-${platform}`, manifest.version]));
  writeFileSync(join(rootStage, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  tarballs.unshift(pack(rootStage, outDir));

  rmSync(stage, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify(tarballs)}\n`);
}

try {
  main();
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
