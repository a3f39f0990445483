// `accelerate merge-weights DIR OUT`: one model.safetensors at OUT from a saveState
// checkpoint directory or sharded weights (model-0000x-of-0000y.safetensors + index).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { defineCommand } from "citty";
import { consola } from "consola";

const WHO = "accelerate merge-weights";

export default defineCommand({
  meta: { name: "merge-weights", description: "Merge a checkpoint directory or sharded weights into one OUT/model.safetensors" },
  args: {
    dir: { type: "positional", required: true, description: "A saveState directory, or weights with model.safetensors.index.json" },
    out: { type: "positional", required: true, description: "The directory to write model.safetensors into" },
  },
  async run({ args }) {
    const hasIndex = existsSync(join(args.dir, "model.safetensors.index.json"));
    if (!hasIndex && !existsSync(join(args.dir, "model.safetensors"))) {
      throw new Error(`${WHO}: ${args.dir} holds neither model.safetensors.index.json nor model.safetensors`);
    }
    const { loadWeights, saveWeights } = await import("../../checkpoint.js");
    const tensors = loadWeights(args.dir);
    // One file however large: a merged model is what the caller asked for.
    const files = saveWeights(tensors, args.out, Number.MAX_SAFE_INTEGER);
    for (const t of Object.values(tensors)) t.dispose();
    consola.success(`${WHO}: ${Object.keys(tensors).length} tensors written to ${files.join(", ")}`);
  },
});
