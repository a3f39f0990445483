// `node --import <this file> script.ts` runs TypeScript with accelerate-ts's own
// transpiler hooks (typescript-hooks.mjs). Plain JavaScript: it must load before any TypeScript can.
import { register } from "node:module";

process.setSourceMapsEnabled(true);
register("./typescript-hooks.mjs", import.meta.url);
