// `accelerate test`: runs the bundled self-check through the launcher with the
// configured number of processes and prints PASS or FAIL.
import { fileURLToPath } from "node:url";
import { defineCommand } from "citty";
import { consola } from "consola";
import { launchScript } from "./launch.js";

// self-check.ts in a checkout, self-check.js in the installed (compiled) package: the same extension as this file.
const selfCheck = fileURLToPath(new URL(`../self-check${import.meta.url.endsWith(".ts") ? ".ts" : ".js"}`, import.meta.url));

export default defineCommand({
  meta: { name: "test", description: "Check that accelerate-ts runs here, on the configured number of processes" },
  args: {
    config_file: { type: "string", valueHint: "PATH", description: "Config file to use (default: $HF_HOME/accelerate/default_config.yaml if present)" },
    num_processes: { type: "string", valueHint: "N", description: "Override the number of processes" },
    cpu: { type: "boolean", description: "Check on the CPU even when GPUs are present" },
    main_process_port: { type: "string", valueHint: "PORT", description: "Rendezvous port; 0 picks a free one (default 29500)" },
  },
  async run({ args }) {
    const code = await launchScript(
      { config_file: args.config_file, num_processes: args.num_processes, cpu: args.cpu, main_process_port: args.main_process_port },
      selfCheck,
      [],
      "accelerate test",
    );
    if (code === 0) consola.success("accelerate test: PASS");
    else consola.fail(`accelerate test: FAIL (exit code ${code}; see the messages above)`);
    process.exitCode = code;
  },
});
