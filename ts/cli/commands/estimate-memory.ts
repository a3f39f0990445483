// `accelerate estimate-memory`: per-device memory of training states without ZeRO and
// with stages 1-3, with and without offload of the optimizer (and, stage 3, the parameters) (see ts/cli/memory-estimate.ts).
import { defineCommand } from "citty";
import { consola } from "consola";
import { BYTES_PER_PARAMETER, estimateModelStateMemory, savedModelParameterCount } from "../memory-estimate.js";

const WHO = "accelerate estimate-memory";
const gib = (bytes: number): string => (bytes / 2 ** 30).toFixed(2);

export default defineCommand({
  meta: { name: "estimate-memory", description: "Per-device memory of parameters, gradients and Adam state under ZeRO stages 0-3" },
  args: {
    model: { type: "positional", required: false, description: "A saved model directory (model.safetensors or its index)" },
    params: { type: "string", valueHint: "COUNT", description: "The parameter count instead of a model, e.g. 1.6e9" },
    num_processes: { type: "string", valueHint: "N", description: "Up to this many processes (rows for 1, 2, 4, ... N; default 8)" },
    json: { type: "boolean", description: "Print JSON instead of a table" },
  },
  run({ args }) {
    if ((args.params === undefined) === (args.model === undefined)) throw new Error(`${WHO}: give a model directory or --params COUNT (one of them)`);
    const parameters = args.params !== undefined ? Number(args.params) : savedModelParameterCount(args.model as string, WHO);
    if (!Number.isFinite(parameters) || parameters <= 0) throw new Error(`${WHO}: --params must be a positive number such as 1.6e9, got ${JSON.stringify(args.params)}`);
    const processes = Number(args.num_processes ?? 8);
    if (!Number.isInteger(processes) || processes < 1) throw new Error(`${WHO}: --num_processes must be a positive integer, got ${JSON.stringify(args.num_processes)}`);
    const rows = estimateModelStateMemory(parameters, processes);
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ parameters, bytesPerParameter: BYTES_PER_PARAMETER, rows }, null, 2)}\n`);
      return;
    }
    consola.log(`${parameters.toExponential(3)} parameters, Adam; model states only (activations come on top). GiB per process:`);
    const header = ["processes", "precision", "ZeRO", "offload", "device GiB", "host GiB"];
    const offload = (r: (typeof rows)[number]) => (r.offloadParameters ? "optimizer+params" : r.offloadOptimizer ? "optimizer" : "-");
    const lines = rows.map((r) => [String(r.processes), r.precision, String(r.zeroStage), offload(r), gib(r.deviceBytes), gib(r.hostBytes)]);
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
    const format = (cells: string[]): string => cells.map((c, i) => (i >= 4 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
    consola.log([format(header), widths.map((w) => "-".repeat(w)).join("  "), ...lines.map(format)].join("\n"));
  },
});
