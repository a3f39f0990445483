// `accelerate config` (questionnaire), `accelerate config default` (no questions)
// and `accelerate config update` (re-validate and re-save).
import { existsSync } from "node:fs";
import { defineCommand } from "citty";
import { consola } from "consola";
import {
  MIXED_PRECISIONS,
  basicClusterConfig,
  defaultConfigPath,
  parseFlagValue,
  readClusterConfig,
  writeClusterConfig,
  type ClusterConfig,
  type MixedPrecisionName,
} from "../config-file.js";
import { askClusterConfig, terminalAsk } from "../questionnaire.js";
import { detectCudaDevices } from "./launch.js";

const configFileArg = {
  config_file: { type: "string", valueHint: "PATH", description: "Where to write (default: $HF_HOME/accelerate/default_config.yaml; .json writes JSON)" },
} as const;

const questionnaire = defineCommand({
  meta: { name: "questionnaire", hidden: true, description: "Ask questions and write the config file" },
  args: configFileArg,
  async run({ args }) {
    const path = args.config_file || defaultConfigPath();
    if (!process.stdin.isTTY) {
      // consola's prompts cannot read a pipe: Node would exit (code 13) waiting for an answer.
      throw new Error(
        "accelerate config: the questions need a terminal, and stdin is not one. " +
          "Run `accelerate config default` (optionally with --mixed_precision bf16 or fp16) to write a config without questions, then edit it if needed.",
      );
    }
    consola.info("Compute environment: this machine (LOCAL_MACHINE)");
    const config = await askClusterConfig(terminalAsk, await detectCudaDevices()).catch((error: unknown) => {
      // consola rejects a prompt cancelled with Ctrl-C.
      if (error instanceof Error && /cancel/i.test(error.message)) throw new Error(`accelerate config: cancelled; ${path} was not written`);
      throw error;
    });
    writeClusterConfig(path, config);
    consola.success(`accelerate configuration saved at ${path}`);
  },
});

const writeDefault = defineCommand({
  meta: { name: "default", description: "Write a config for this machine without asking (all GPUs, or one CPU process)" },
  args: {
    ...configFileArg,
    mixed_precision: { type: "string", valueHint: MIXED_PRECISIONS.join("|"), description: "Mixed precision mode (default no)" },
  },
  async run({ args }) {
    const path = args.config_file || defaultConfigPath();
    if (existsSync(path)) {
      throw new Error(`accelerate config default: ${path} already exists; not overwriting it (delete it, edit it, or pass --config_file for another path)`);
    }
    const mixedPrecision: MixedPrecisionName = args.mixed_precision ? parseFlagValue("mixed_precision", args.mixed_precision, "accelerate config default") : "no";
    writeClusterConfig(path, basicClusterConfig(await detectCudaDevices(), mixedPrecision));
    consola.success(`accelerate configuration saved at ${path}`);
  },
});

const update = defineCommand({
  meta: { name: "update", description: "Re-validate an existing config file and save it again in the current format" },
  args: configFileArg,
  run({ args }) {
    const path = args.config_file || defaultConfigPath();
    const config: ClusterConfig = readClusterConfig(path);
    writeClusterConfig(path, config);
    consola.success(`accelerate configuration updated at ${path}`);
  },
});

export default defineCommand({
  meta: { name: "config", description: "Create the config file that `accelerate launch` reads (interactive unless a subcommand is given)" },
  args: configFileArg,
  subCommands: { default: writeDefault, update, questionnaire },
  default: "questionnaire",
});
