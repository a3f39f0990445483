// DeepSpeed JSON configs and the FSDP/DeepSpeed launcher settings: configs from HF's and
// DeepSpeed's documentation with "auto" values (ZeRO-2; ZeRO-3 with CPU offload) configure a
// run, keys that do not apply are named, misspellings get a suggestion, and plugins, launcher
// flags, config files and the `accelerate config` questions reach the Accelerator's
// StrategyConfig (through HF's environment variables where the launcher is involved).
import test from "ava";
import { readFileSync } from "node:fs";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { Accelerator, data, nn, optim, randint, randn, type DeepSpeedConfigJson } from "../ts/index.js";
import { parseClusterConfig, readClusterConfig, writeClusterConfig, type ClusterConfig } from "../ts/cli/config-file.js";
import { askClusterConfig } from "../ts/cli/questionnaire.js";
import { resolveLaunchPlan, type LaunchFlags } from "../ts/cli/launch-settings.js";
import { rankEnvironment } from "../ts/launch/plan.js";
import { readDeepSpeedConfig } from "../ts/strategy/deepspeed-config.js";
import { strategyConfigOf, type StrategyConfig } from "../ts/strategy/index.js";
import { scriptedAsk } from "./helpers/scripted-ask.js";

const example = fileURLToPath(new URL("./fixtures/deepspeed/zero2-auto.json", import.meta.url));
const exampleJson = (): DeepSpeedConfigJson => JSON.parse(readFileSync(example, "utf8")) as DeepSpeedConfigJson;
const zero3Offload = fileURLToPath(new URL("./fixtures/deepspeed/zero3-offload-auto.json", import.meta.url));
const zero3OffloadPlugin = fileURLToPath(new URL("./fixtures/deepspeed/zero3-offload-plugin.yaml", import.meta.url));
const noGpus = async (): Promise<number> => 0;
const zeroPart = (config: StrategyConfig) => {
  const { zeroStage, offloadOptimizer, offloadParameters, paramPersistenceThreshold, prefetchBytes } = config;
  return { zeroStage, offloadOptimizer, offloadParameters, paramPersistenceThreshold, prefetchBytes };
};
const DEFAULT_SIZES = { paramPersistenceThreshold: 100_000, prefetchBytes: 50_000_000 };

test("the documentation's ZeRO-2 config with \"auto\" values configures a run", (t) => {
  const accelerator = new Accelerator({ cpu: true, gradientAccumulationSteps: 2, deepspeedPlugin: { hfDsConfig: exampleJson() } });
  const config = accelerator.strategyConfig;
  t.is(config.zeroStage, 2);
  t.is(accelerator.gradientAccumulationSteps, 2);
  t.is(accelerator.mixedPrecision, "no", "fp16/bf16 \"auto\" follow the run");
  t.is(config.gradientClipping, undefined, "\"auto\" clipping with none given by the run");
  t.deepEqual(config.gradScaler, { growthInterval: 1000, initScale: 65536 });
  for (const key of ["optimizer", "scheduler", "steps_per_print", "zero_optimization.overlap_comm", "zero_optimization.reduce_bucket_size", "fp16.hysteresis"]) {
    t.true(config.notUsed.some((line) => line.startsWith(`${key} (`)), `${key} is named as not used`);
  }
  const net = new nn.Linear(4, 2);
  const [model, opt, loader] = accelerator.prepare(
    net,
    new optim.SGD(net.parameters(), { lr: 0.1 }),
    new data.DataLoader(new data.TensorDataset({ x: randn([16, 4]), y: randint(0, 2, [16]) }), { batchSize: 4 }),
  );
  t.is(config.trainMicroBatchSizePerGpu, 4, "micro batch from the loader");
  t.is(config.trainBatchSize, 8, "micro · accumulation · processes");
  let steps = 0;
  for (const { x, y } of loader as Iterable<{ x: ReturnType<typeof randn>; y: ReturnType<typeof randn> }>) {
    accelerator.accumulate(model, () => {
      accelerator.backward(nn.functional.crossEntropy(model.forward(x), y));
      opt.step();
      opt.zeroGrad();
    });
    steps++;
  }
  t.is(steps, 4);
});

test("the same config from a file, with numbers that must agree with the run", (t) => {
  const accelerator = new Accelerator({ cpu: true, deepspeedPlugin: { configFile: example, gradientClipping: 0.5 } });
  t.is(accelerator.strategyConfig.gradientClipping, 0.5, "\"auto\" clipping filled from the plugin");
  const dir = mkdtempSync(join(tmpdir(), "ds-config-"));
  const file = join(dir, "ds.json");
  writeFileSync(file, JSON.stringify({ ...exampleJson(), train_micro_batch_size_per_gpu: 8 }));
  // A micro batch the config gives is kept whatever the loaders' batch sizes (HF); a
  // train_batch_size that disagrees with it is an Error, as in DeepSpeed.
  const given = new Accelerator({ cpu: true, deepspeedPlugin: { configFile: file } });
  given.prepare(new data.DataLoader(new data.TensorDataset({ x: randn([16, 4]) }), { batchSize: 4 }));
  t.is(given.strategyConfig.trainMicroBatchSizePerGpu, 8);
  writeFileSync(file, JSON.stringify({ ...exampleJson(), train_micro_batch_size_per_gpu: 8, train_batch_size: 12 }));
  const mismatched = new Accelerator({ cpu: true, deepspeedPlugin: { configFile: file } });
  const loader = new data.DataLoader(new data.TensorDataset({ x: randn([16, 4]) }), { batchSize: 8 });
  t.throws(() => mismatched.prepare(loader), { message: /train_batch_size is 12 but micro batch 8 × gradient accumulation/ });
  t.throws(() => new Accelerator({ cpu: true, gradientAccumulationSteps: 3, deepspeedPlugin: { hfDsConfig: { gradient_accumulation_steps: 2 } } }), {
    message: /gradientAccumulationSteps is 3 but the DeepSpeed config's gradient_accumulation_steps is 2/,
  });
  // fp8 is bf16 with fp8 Linear layers: a config with bf16 on agrees with it, one with fp16 does not.
  t.is(new Accelerator({ cpu: true, mixedPrecision: "fp8", deepspeedPlugin: { hfDsConfig: { bf16: { enabled: true } } } }).mixedPrecision, "fp8");
  t.is(new Accelerator({ cpu: true, deepspeedPlugin: { hfDsConfig: { bf16: { enabled: true } } } }).mixedPrecision, "bf16");
  t.throws(() => new Accelerator({ cpu: true, mixedPrecision: "fp8", deepspeedPlugin: { hfDsConfig: { fp16: { enabled: true } } } }), {
    message: /mixedPrecision is "fp8" but the DeepSpeed config's bf16\/fp16 enabled is "fp16"/,
  });
});

test("under ZeRO, an evaluation loader may have another batch size: the micro batch is the smallest of the first prepare's loaders", (t) => {
  const loader = (batchSize: number) => new data.DataLoader(new data.TensorDataset({ x: randn([64, 4]) }), { batchSize });
  for (const plugin of [{ deepspeedPlugin: { zeroStage: 3 } }, { fsdpPlugin: {} }]) {
    const accelerator = new Accelerator({ cpu: true, ...plugin });
    const net = new nn.Linear(4, 4);
    const [, , train, evaluation] = accelerator.prepare(net, new optim.AdamW(net.parameters()), loader(16), loader(32));
    t.is(accelerator.strategyConfig.trainMicroBatchSizePerGpu, 16, "the smaller of the two, as HF's is_train_batch_min");
    const [later] = accelerator.prepare(loader(8));
    t.is(accelerator.strategyConfig.trainMicroBatchSizePerGpu, 16, "a loader prepared later changes nothing");
    t.is(accelerator.strategyConfig.trainBatchSize, 16);
    t.deepEqual([train, evaluation, later].map((l) => [...(l as Iterable<unknown>)].length), [4, 2, 8]);
  }
  // A loader left at the default batch size batches 1 sample, and counts as 1.
  const defaults = new Accelerator({ cpu: true, deepspeedPlugin: { zeroStage: 2 } });
  defaults.prepare(new data.DataLoader(new data.TensorDataset({ x: randn([8, 4]) })), loader(4));
  t.is(defaults.strategyConfig.trainMicroBatchSizePerGpu, 1);
});

test("misspelled keys are named with a suggestion; NVMe offload and a static loss scale are Errors", (t) => {
  t.throws(() => readDeepSpeedConfig({ gradient_acumulation_steps: 2 }, "ds.json"), {
    message: 'DeepSpeed config ds.json: unknown key "gradient_acumulation_steps" (did you mean "gradient_accumulation_steps"?)',
  });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stag: 2 } }, "ds.json"), { message: /unknown key "stag" \(did you mean "stage"\?\)/ });
  t.throws(() => readDeepSpeedConfig({ fp16: { enabled: true, initial_scale_powr: 8 } }, "ds.json"), { message: /did you mean "initial_scale_power"/ });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stage: 4 } }, "ds.json"), { message: 'DeepSpeed config ds.json: "zero_optimization.stage" must be 0, 1, 2 or 3, got 4' });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stage: 2, offload_optimizer: { device: "nvme", nvme_path: "/nvme" } } }, "ds.json"), {
    message: 'DeepSpeed config ds.json: "zero_optimization.offload_optimizer.device" "nvme": NVMe offload is not available; use "cpu" or "none"',
  });
  t.deepEqual(readDeepSpeedConfig({ zero_optimization: { stage: 1, stage3_max_live_parameters: 1e9 } }, "ds.json").notUsed, [
    "zero_optimization.stage3_max_live_parameters (parameters are released after each module)",
  ]);
  t.is(readDeepSpeedConfig({ bf16: { enabled: true } }, "ds.json").mixedPrecision, "bf16");
  t.throws(() => readDeepSpeedConfig({ fp16: { enabled: true, loss_scale: 128 } }, "ds.json"), { message: /static loss scale/ });
});

test("gradient_clipping from the config clips inside the optimizer's step", (t) => {
  const moved = (clip: number | undefined): number => {
    const accelerator = new Accelerator({ cpu: true, seed: 0, deepspeedPlugin: { zeroStage: 0, hfDsConfig: clip === undefined ? {} : { gradient_clipping: clip } } });
    const net = new nn.Linear(4, 2);
    const before = net.parameters().map((p) => [...(p.toArray() as number[]).flat()]);
    const [model, opt] = accelerator.prepare(net, new optim.SGD(net.parameters(), { lr: 1 }));
    accelerator.backward(model.forward(randn([8, 4]).mul(100)).pow(2).mean());
    opt.step();
    const after = net.parameters().map((p) => [...(p.toArray() as number[]).flat()]);
    return Math.sqrt(after.flat().reduce((sum, v, i) => sum + (v - before.flat()[i]) ** 2, 0));
  };
  t.true(moved(undefined) > 1, "without clipping the step is large");
  t.true(moved(1e-3) <= 1e-3 + 1e-7, "with gradient_clipping 1e-3 the update's norm is at most 1e-3 (SGD, lr 1)");
});

const planEnv = async (flags: LaunchFlags, config = {}): Promise<Record<string, string>> => {
  const { plan } = await resolveLaunchPlan({ num_processes: "2", cpu: true, ...flags }, config, noGpus);
  return rankEnvironment(plan, 0, 29500, {}, 2);
};

test("launch flags reach the Accelerator through HF's environment variables", async (t) => {
  const ds = await planEnv({ deepspeed_config_file: example, gradient_clipping: "1.0" });
  t.like(ds, { ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "2", ACCELERATE_DEEPSPEED_CONFIG_FILE: example, ACCELERATE_GRADIENT_CLIPPING: "1" });
  const fromDs = strategyConfigOf({}, ds);
  t.is(fromDs.zeroStage, 2);
  t.is(fromDs.gradientClipping, 1);
  const fsdp = await planEnv({ use_fsdp: true, fsdp_version: "2", fsdp_reshard_after_forward: "false" });
  t.like(fsdp, { ACCELERATE_USE_FSDP: "true", FSDP_VERSION: "2", FSDP_RESHARD_AFTER_FORWARD: "false" });
  t.false("ACCELERATE_USE_DEEPSPEED" in fsdp);
  t.is(strategyConfigOf({}, fsdp).zeroStage, 2);
  await t.throwsAsync(planEnv({ deepspeed_config_file: example, zero_stage: "1" }), { message: /--zero_stage 1 disagrees with zero_optimization.stage 2/ });
  await t.throwsAsync(planEnv({ fsdp_version: "2" }), { message: /--fsdp_version needs --use_fsdp/ });
});

test("HF config files with distributed_type DEEPSPEED and FSDP", async (t) => {
  const unused: string[] = [];
  const deepspeed = parseClusterConfig(
    YAML.parse(
      "distributed_type: DEEPSPEED\nnum_processes: 2\nuse_cpu: true\ndeepspeed_config:\n  zero_stage: 1\n  gradient_accumulation_steps: 4\n  gradient_clipping: 1.0\n" +
        "  offload_optimizer_device: none\n  offload_param_device: none\n  zero3_init_flag: false\n  zero3_save_16bit_model: true\n",
    ),
    "ds.yaml",
    unused,
  );
  t.deepEqual(unused, ["deepspeed_config.zero3_save_16bit_model"]);
  const env = await planEnv({}, deepspeed);
  t.like(env, { ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "1", ACCELERATE_GRADIENT_ACCUMULATION_STEPS: "4", ACCELERATE_GRADIENT_CLIPPING: "1" });
  const fsdp = parseClusterConfig(YAML.parse("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_reshard_after_forward: false\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n"), "f.yaml");
  t.like(await planEnv({}, fsdp), { ACCELERATE_USE_FSDP: "true", FSDP_RESHARD_AFTER_FORWARD: "false" });
  t.throws(() => parseClusterConfig(YAML.parse("deepspeed_config:\n  zero_stag: 2\n"), "d.yaml"), { message: /unknown key "zero_stag" \(did you mean "zero_stage"\?\)/ });
  t.throws(() => parseClusterConfig(YAML.parse("deepspeed_config:\n  offload_optimizer_device: nvme\n"), "d.yaml"), {
    message: 'config file d.yaml: "deepspeed_config" must be a mapping whose "offload_optimizer_device" is "cpu" or "none" (NVMe offload is not available; use "cpu" or "none"), got "nvme"',
  });
});

test("the documentation's ZeRO-3 config with CPU offload and \"auto\" values configures stage 3 and offload", (t) => {
  const config = strategyConfigOf({ deepspeedPlugin: { configFile: zero3Offload } }, {});
  t.deepEqual(zeroPart(config), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, ...DEFAULT_SIZES }, "\"auto\" sizes take DeepSpeed's defaults");
  t.is(config.mixedPrecision, "fp16");
  t.is(config.gradientAccumulationSteps, 1);
  for (const key of [
    "zero_optimization.offload_optimizer.pin_memory", "zero_optimization.offload_param.pin_memory", "zero_optimization.stage3_max_live_parameters",
    "zero_optimization.stage3_max_reuse_distance", "zero_optimization.stage3_gather_16bit_weights_on_model_save", "zero_optimization.sub_group_size",
  ]) {
    t.true(config.notUsed.some((line) => line.startsWith(`${key} (`)), `${key} is named as not used`);
  }
  t.false(config.notUsed.some((line) => /stage3_param_persistence_threshold|stage3_prefetch_bucket_size|offload_optimizer \(|offload_param \(/.test(line)), config.notUsed.join("; "));
  const accelerator = new Accelerator({ cpu: true, deepspeedPlugin: { hfDsConfig: JSON.parse(readFileSync(zero3Offload, "utf8")) as DeepSpeedConfigJson } });
  t.deepEqual(zeroPart(accelerator.strategyConfig), zeroPart(config), "the Accelerator keeps the same values for its strategy");
  const sized = readDeepSpeedConfig({ zero_optimization: { stage: 3, stage3_param_persistence_threshold: 1e4, stage3_prefetch_bucket_size: 2e8 } }, "ds.json");
  t.like(sized, { zeroStage: 3, paramPersistenceThreshold: 10_000, prefetchBytes: 200_000_000 });
  t.like(readDeepSpeedConfig({ zero_optimization: { stage: 2, cpu_offload: true } }, "ds.json"), { zeroStage: 2, offloadOptimizer: true }, "DeepSpeed's older name");
  t.like(readDeepSpeedConfig({ zero_optimization: { stage: 3, offload_optimizer: { device: "auto" }, offload_param: null } }, "ds.json"), {
    offloadOptimizer: undefined,
    offloadParameters: undefined,
  });
  t.deepEqual(readDeepSpeedConfig({ zero_force_ds_cpu_optimizer: false }, "ds.json").notUsed, [
    "zero_force_ds_cpu_optimizer (with offload, the optimizer passed to prepare() steps on the CPU)",
  ]);
});

test("offload keys: misspellings get a suggestion, and each offload needs its stage", (t) => {
  const read = (zero: DeepSpeedConfigJson) => () => readDeepSpeedConfig({ zero_optimization: zero }, "ds.json");
  t.throws(read({ stage: 3, offload_optimizer: { device: "cpu", pin_memmory: true } }), {
    message: 'DeepSpeed config ds.json: zero_optimization.offload_optimizer: unknown key "pin_memmory" (did you mean "pin_memory"?)',
  });
  t.throws(read({ stage: 3, offload_param: { devise: "cpu" } }), { message: /zero_optimization.offload_param: unknown key "devise" \(did you mean "device"\?\)/ });
  t.throws(read({ stage: 3, stage3_param_persistance_threshold: 10 }), { message: /unknown key "stage3_param_persistance_threshold" \(did you mean "stage3_param_persistence_threshold"\?\)/ });
  t.throws(read({ stage: 3, offload_optimizer: { device: "gpu" } }), { message: 'DeepSpeed config ds.json: "zero_optimization.offload_optimizer.device" must be "cpu" or "none", got "gpu"' });
  t.throws(read({ stage: 3, offload_optimizer: "cpu" }), { message: /"zero_optimization.offload_optimizer" must be a mapping such as \{ "device": "cpu" \}/ });
  t.throws(read({ stage: 0, offload_optimizer: { device: "cpu" } }), {
    message: 'DeepSpeed config ds.json: "zero_optimization.offload_optimizer.device" "cpu" needs ZeRO stage 1, 2 or 3 (the optimizer state is offloaded by partition), but "zero_optimization.stage" is 0',
  });
  t.throws(read({ stage: 2, offload_param: { device: "cpu" } }), { message: /"zero_optimization.offload_param.device" "cpu" needs ZeRO stage 3 \(parameters sharded\), but "zero_optimization.stage" is 2/ });
  t.throws(read({ stage: 1, cpu_offload_param: true }), { message: /"zero_optimization.cpu_offload_param" true needs ZeRO stage 3/ });
  t.throws(read({ stage: 2, cpu_offload: true, offload_optimizer: { device: "cpu" } }), { message: /give "zero_optimization.offload_optimizer" or its older spelling "zero_optimization.cpu_offload", not both/ });
  t.throws(read({ stage: 3, stage3_prefetch_bucket_size: -1 }), { message: /"zero_optimization.stage3_prefetch_bucket_size" must be a non-negative integer or "auto", got -1/ });
  t.throws(read({ stage: 3, stage3_param_persistence_threshold: 0.5 }), { message: /"zero_optimization.stage3_param_persistence_threshold" must be a non-negative integer \(elements\) or "auto", got 0.5/ });
});

test("deepspeedPlugin and fsdpPlugin ask for stage 3 and offload; bad values name the option", (t) => {
  t.deepEqual(zeroPart(strategyConfigOf({ deepspeedPlugin: { zeroStage: 3 } }, {})), { zeroStage: 3, offloadOptimizer: false, offloadParameters: false, ...DEFAULT_SIZES });
  const plugin = { zeroStage: 3, offloadOptimizerDevice: "cpu", offloadParamDevice: "cpu", stage3ParamPersistenceThreshold: 0, stage3PrefetchBucketSize: 1024, zero3InitFlag: true } as const;
  t.deepEqual(zeroPart(strategyConfigOf({ deepspeedPlugin: plugin }, {})), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, paramPersistenceThreshold: 0, prefetchBytes: 1024 });
  t.like(strategyConfigOf({ deepspeedPlugin: { zeroStage: 1, offloadOptimizerDevice: "cpu" } }, {}), { zeroStage: 1, offloadOptimizer: true, offloadParameters: false });
  t.like(strategyConfigOf({ deepspeedPlugin: { offloadOptimizerDevice: "none", offloadParamDevice: "none" } }, {}), { zeroStage: 2, offloadOptimizer: false });
  t.like(strategyConfigOf({ deepspeedPlugin: { zeroStage: 3, offloadParamDevice: "cpu", hfDsConfig: { zero_optimization: { stage: "auto" } } } }, {}), { zeroStage: 3, offloadParameters: true });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { offloadParamDevice: "cpu" } }, {}), {
    message: 'Accelerator: deepspeedPlugin.offloadParamDevice "cpu" needs ZeRO stage 3 (parameters sharded), but the ZeRO stage (default 2) is 2',
  });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 0, offloadOptimizerDevice: "cpu" } }, {}), {
    message: /deepspeedPlugin.offloadOptimizerDevice "cpu" needs ZeRO stage 1, 2 or 3 .*, but deepspeedPlugin.zeroStage is 0/,
  });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 3, offloadOptimizerDevice: "nvme" as "cpu" } }, {}), {
    message: 'Accelerator: deepspeedPlugin.offloadOptimizerDevice "nvme": NVMe offload is not available; use "cpu" or "none"',
  });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 4 } }, {}), { message: "Accelerator: deepspeedPlugin.zeroStage must be 0, 1, 2 or 3, got 4" });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 3, stage3PrefetchBucketSize: -5 } }, {}), { message: /deepspeedPlugin.stage3PrefetchBucketSize must be a non-negative integer, got -5/ });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zero3InitFlag: "yes" as unknown as boolean } }, {}), { message: /deepspeedPlugin.zero3InitFlag must be true or false, got "yes"/ });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 2, offloadParamDevice: "cpu", configFile: zero3Offload } }, {}), {
    message: "Accelerator: deepspeedPlugin.zeroStage is 2 but the DeepSpeed config's zero_optimization.stage is 3; give it once",
  });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { offloadParamDevice: "none", configFile: zero3Offload } }, {}), {
    message: /deepspeedPlugin.offloadParamDevice is "none" but the DeepSpeed config's zero_optimization.offload_param.device is "cpu"; give it once/,
  });
  t.throws(() => strategyConfigOf({ deepspeedPlugin: { zeroStage: 0, hfDsConfig: { zero_optimization: { offload_optimizer: { device: "cpu" } } } } }, {}), {
    message: /the DeepSpeed config's zero_optimization.offload_optimizer.device "cpu" needs ZeRO stage 1, 2 or 3 .*, but deepspeedPlugin.zeroStage is 0/,
  });

  t.deepEqual(zeroPart(strategyConfigOf({ fsdpPlugin: {} }, {})), { zeroStage: 3, offloadOptimizer: false, offloadParameters: false, ...DEFAULT_SIZES, paramPersistenceThreshold: 0 }, "FSDP2's default: full shard of every parameter");
  t.like(strategyConfigOf({ fsdpPlugin: { cpuOffload: true } }, {}), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });
  t.like(strategyConfigOf({ fsdpPlugin: { reshardAfterForward: false, cpuOffload: true } }, {}), { zeroStage: 2, offloadOptimizer: true, offloadParameters: false }, "stage 2 keeps parameters whole");
  t.throws(() => strategyConfigOf({ fsdpPlugin: { cpuOffload: "yes" as unknown as boolean } }, {}), { message: 'Accelerator: fsdpPlugin.cpuOffload must be true or false, got "yes"' });
  t.throws(() => strategyConfigOf({ fsdpPlugin: { fsdpVersion: 1 } }, {}), { message: /fsdpPlugin.fsdpVersion must be 2 \(FSDP1 is not available\), got 1/ });
});

test("HF's environment variables for stage 3 and offload, and bad values naming the variable", (t) => {
  const ds = { ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "3" };
  t.like(strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "cpu", ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE: "cpu", ACCELERATE_DEEPSPEED_ZERO3_INIT: "true" }), {
    zeroStage: 3, offloadOptimizer: true, offloadParameters: true,
  });
  t.like(strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "none", ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE: "" }), { zeroStage: 3, offloadOptimizer: false, offloadParameters: false });
  t.throws(() => strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "nvme" }), {
    message: 'Accelerator: ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE "nvme": NVMe offload is not available; use "cpu" or "none"',
  });
  t.throws(() => strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_ZERO_STAGE: "2", ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE: "cpu" }), {
    message: 'Accelerator: ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE "cpu" needs ZeRO stage 3 (parameters sharded), but ACCELERATE_DEEPSPEED_ZERO_STAGE is 2',
  });
  t.throws(() => strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_ZERO_STAGE: "three" }), { message: 'Accelerator: ACCELERATE_DEEPSPEED_ZERO_STAGE must be 0, 1, 2 or 3, got "three"' });
  t.throws(() => strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_ZERO_STAGE: "7" }), { message: "Accelerator: ACCELERATE_DEEPSPEED_ZERO_STAGE must be 0, 1, 2 or 3, got 7" });
  t.throws(() => strategyConfigOf({}, { ...ds, ACCELERATE_DEEPSPEED_ZERO3_INIT: "maybe" }), { message: 'Accelerator: ACCELERATE_DEEPSPEED_ZERO3_INIT must be true or false, got "maybe"' });

  const fsdp = { ACCELERATE_USE_FSDP: "true", FSDP_VERSION: "2" };
  t.like(strategyConfigOf({}, fsdp), { zeroStage: 3, offloadOptimizer: false, offloadParameters: false });
  t.like(strategyConfigOf({}, { ...fsdp, FSDP_RESHARD_AFTER_FORWARD: "true", FSDP_OFFLOAD_PARAMS: "true" }), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });
  t.like(strategyConfigOf({}, { ...fsdp, FSDP_RESHARD_AFTER_FORWARD: "false", FSDP_OFFLOAD_PARAMS: "1" }), { zeroStage: 2, offloadOptimizer: true, offloadParameters: false });
  t.throws(() => strategyConfigOf({}, { ...fsdp, FSDP_OFFLOAD_PARAMS: "sometimes" }), { message: 'Accelerator: FSDP_OFFLOAD_PARAMS must be true or false, got "sometimes"' });
  t.throws(() => strategyConfigOf({}, { ...fsdp, FSDP_VERSION: "1" }), { message: 'Accelerator: FSDP_VERSION must be 2 (FSDP1 is not available), got "1"' });
});

test("launch flags for stage 3 and offload reach the StrategyConfig; bad ones name the flag", async (t) => {
  const ds = await planEnv({ use_deepspeed: true, zero_stage: "3", offload_optimizer_device: "cpu", offload_param_device: "CPU", zero3_init_flag: "true" });
  t.like(ds, {
    ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "3", ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "cpu",
    ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE: "cpu", ACCELERATE_DEEPSPEED_ZERO3_INIT: "true",
  });
  t.deepEqual(zeroPart(strategyConfigOf({}, ds)), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, ...DEFAULT_SIZES });
  const stage1 = await planEnv({ use_deepspeed: true, zero_stage: "1", offload_optimizer_device: "cpu" });
  t.like(strategyConfigOf({}, stage1), { zeroStage: 1, offloadOptimizer: true, offloadParameters: false });
  const fromFile = await planEnv({ deepspeed_config_file: zero3Offload });
  t.false("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE" in fromFile, "the file gives the offloads itself");
  t.like(strategyConfigOf({}, fromFile), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });

  const fsdp = await planEnv({ use_fsdp: true });
  t.like(fsdp, { ACCELERATE_USE_FSDP: "true", FSDP_VERSION: "2", FSDP_RESHARD_AFTER_FORWARD: "true", FSDP_OFFLOAD_PARAMS: "false" });
  t.like(strategyConfigOf({}, fsdp), { zeroStage: 3, offloadOptimizer: false }, "FSDP2's default is full shard");
  const fsdpOffload = await planEnv({ use_fsdp: true, fsdp_reshard_after_forward: "true", fsdp_offload_params: "true" });
  t.like(strategyConfigOf({}, fsdpOffload), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });
  const fsdpStage2 = await planEnv({ use_fsdp: true, fsdp_reshard_after_forward: "false", fsdp_offload_params: "true" });
  t.like(strategyConfigOf({}, fsdpStage2), { zeroStage: 2, offloadOptimizer: true, offloadParameters: false });

  const fails = async (flags: LaunchFlags, message: string | RegExp): Promise<void> => {
    await t.throwsAsync(planEnv(flags), { message }, JSON.stringify(flags));
  };
  await fails({ use_deepspeed: true, zero_stage: "2", offload_param_device: "cpu" }, "accelerate launch: --offload_param_device cpu needs ZeRO stage 3 (parameters sharded), but --zero_stage is 2");
  await fails({ use_deepspeed: true, offload_param_device: "cpu" }, /--offload_param_device cpu needs ZeRO stage 3 \(parameters sharded\), but the ZeRO stage \(default 2\) is 2/);
  await fails({ use_deepspeed: true, zero_stage: "0", offload_optimizer_device: "cpu" }, /--offload_optimizer_device cpu needs ZeRO stage 1, 2 or 3 .*, but --zero_stage is 0/);
  await fails({ use_deepspeed: true, zero_stage: "3", offload_optimizer_device: "nvme" }, 'accelerate launch: --offload_optimizer_device "nvme": NVMe offload is not available; use "cpu" or "none"');
  await fails({ use_deepspeed: true, zero_stage: "4" }, 'accelerate launch: --zero_stage must be 0, 1, 2 or 3, got "4"');
  await fails({ use_deepspeed: true, zero3_init_flag: "sure" }, 'accelerate launch: --zero3_init_flag must be true or false, got "sure"');
  await fails({ offload_optimizer_device: "cpu" }, "accelerate launch: --offload_optimizer_device needs --use_deepspeed");
  await fails({ fsdp_offload_params: "true" }, "accelerate launch: --fsdp_offload_params needs --use_fsdp");
  await fails({ use_fsdp: true, fsdp_offload_params: "perhaps" }, 'accelerate launch: --fsdp_offload_params must be true or false, got "perhaps"');
  await fails({ deepspeed_config_file: zero3Offload, offload_param_device: "none" }, /--offload_param_device none disagrees with zero_optimization.offload_param.device cpu in .*zero3-offload-auto.json; give it once/);
});

test("HF config files for ZeRO-3 with CPU offload, in both dialects", async (t) => {
  const unused: string[] = [];
  const plugin = readClusterConfig(zero3OffloadPlugin, unused);
  t.deepEqual(unused, ["deepspeed_config.zero3_save_16bit_model"]);
  t.deepEqual(plugin.deepspeed_config, {
    gradient_accumulation_steps: 1, gradient_clipping: 1, offload_optimizer_device: "cpu", offload_param_device: "cpu", zero3_init_flag: true, zero_stage: 3,
  });
  const env = await planEnv({}, plugin);
  t.like(env, { ACCELERATE_DEEPSPEED_ZERO_STAGE: "3", ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "cpu", ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE: "cpu", ACCELERATE_DEEPSPEED_ZERO3_INIT: "true" });
  t.like(strategyConfigOf({}, env), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, gradientClipping: 1 });

  // The docs' other form: a deepspeed_config_file and zero3_init_flag.
  const withFile = parseClusterConfig({ distributed_type: "DEEPSPEED", deepspeed_config: { deepspeed_config_file: zero3Offload, zero3_init_flag: true } }, "ds.yaml");
  t.like(strategyConfigOf({}, await planEnv({}, withFile)), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, mixedPrecision: "fp16" });

  const fsdp = parseClusterConfig(YAML.parse("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_reshard_after_forward: true\n  fsdp_offload_params: true\n"), "f.yaml");
  const fsdpEnv = await planEnv({}, fsdp);
  t.like(fsdpEnv, { ACCELERATE_USE_FSDP: "true", FSDP_RESHARD_AFTER_FORWARD: "true", FSDP_OFFLOAD_PARAMS: "true" });
  t.like(strategyConfigOf({}, fsdpEnv), { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });
  t.like(strategyConfigOf({}, await planEnv({ fsdp_offload_params: "false" }, fsdp)), { zeroStage: 3, offloadOptimizer: false }, "a flag wins over the file");

  const bad = (text: string) => () => parseClusterConfig(YAML.parse(text), "d.yaml");
  t.throws(bad("deepspeed_config:\n  zero_stage: 2\n  offload_param_device: cpu\n"), {
    message: 'config file d.yaml: "deepspeed_config" must be a mapping whose keys agree ("offload_param_device" "cpu" needs ZeRO stage 3 (parameters sharded), but "zero_stage" is 2)',
  });
  t.throws(bad("deepspeed_config:\n  zero_stage: 5\n"), { message: 'config file d.yaml: "deepspeed_config" must be a mapping whose "zero_stage" is 0, 1, 2 or 3, got 5' });
  t.throws(bad("fsdp_config:\n  fsdp_offload_params: often\n"), { message: /"fsdp_config" must be a mapping whose "fsdp_offload_params" is true or false, got "often"/ });
  t.throws(bad("fsdp_config:\n  fsdp_ofload_params: true\n"), { message: /unknown key "fsdp_ofload_params" \(did you mean "fsdp_offload_params"\?\)/ });
  // The section alone may leave the stage to the launcher's flag, which is then checked.
  const offloadOnly = parseClusterConfig(YAML.parse("distributed_type: DEEPSPEED\ndeepspeed_config:\n  offload_param_device: cpu\n"), "d.yaml");
  await t.throwsAsync(planEnv({ zero_stage: "1" }, offloadOnly), {
    message: "accelerate launch: the config file's deepspeed_config.offload_param_device cpu needs ZeRO stage 3 (parameters sharded), but --zero_stage is 1",
  });
});

/** What `accelerate config` wrote, read back from its YAML file, and the StrategyConfig a launch of it gives. */
async function writtenAndLaunched(config: ClusterConfig): Promise<{ reread: ClusterConfig; strategy: StrategyConfig }> {
  const path = join(mkdtempSync(join(tmpdir(), "acc-q-")), "default_config.yaml");
  writeClusterConfig(path, config);
  const reread = readClusterConfig(path);
  return { reread, strategy: strategyConfigOf({}, await planEnv({}, reread)) };
}

test("the config questionnaire asks HF's DeepSpeed and FSDP questions and writes a file that launches them", async (t) => {
  // Machine type ... GPU ids, DeepSpeed? yes, a DeepSpeed config file? no, stage, optimizer offload, parameter offload,
  // accumulation, clipping? yes, clipping value, mixed precision.
  const deepspeed = scriptedAsk(["MULTI_GPU", "1", "2", "all", true, false, "3", "cpu", "cpu", "2", true, "1.0", "bf16"]);
  const config = await askClusterConfig(deepspeed.ask, 2);
  t.is(deepspeed.answers.length, 0);
  t.like(config, { distributed_type: "DEEPSPEED", num_processes: 2, mixed_precision: "bf16" });
  t.deepEqual(config.deepspeed_config, { zero_stage: 3, offload_optimizer_device: "cpu", offload_param_device: "cpu", gradient_accumulation_steps: 2, gradient_clipping: 1 });
  t.false("gradient_accumulation_steps" in config, "accumulation is DeepSpeed's, as HF writes it");
  t.deepEqual(deepspeed.asked.slice(4), [
    "Do you want to use DeepSpeed?",
    "Do you want to specify a json file to a DeepSpeed config?",
    "What should be your DeepSpeed's ZeRO optimization stage?",
    "Where to offload optimizer states?",
    "Where to offload parameters?",
    "How many gradient accumulation steps you're passing in your script?",
    "Do you want to use gradient clipping?",
    "What is the gradient clipping value?",
    "Do you wish to use mixed precision?",
  ]);
  const launched = await writtenAndLaunched(config);
  t.deepEqual(launched.reread, config, "the YAML round-trips");
  t.like(launched.strategy, { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, gradientClipping: 1 });

  // Stage 2 is not asked about parameter offload; a bad clipping value is asked again.
  const stage2 = scriptedAsk(["MULTI_GPU", "1", "2", "all", true, false, "2", "cpu", "1", true, "-1", "0.5", "no"]);
  const config2 = await askClusterConfig(stage2.ask, 2);
  t.deepEqual(config2.deepspeed_config, { zero_stage: 2, offload_optimizer_device: "cpu", gradient_accumulation_steps: 1, gradient_clipping: 0.5 });
  t.deepEqual(stage2.warnings, ['"-1" is not a non-negative number; try again']);
  t.like((await writtenAndLaunched(config2)).strategy, { zeroStage: 2, offloadOptimizer: true, offloadParameters: false });

  // A DeepSpeed config file: neither precision nor accumulation is asked (the file has them); a wrong path is asked again.
  const file = scriptedAsk(["MULTI_GPU", "1", "2", "all", true, true, "/nonexistent/ds.json", zero3Offload]);
  const config3 = await askClusterConfig(file.ask, 2);
  t.is(file.answers.length, 0);
  t.deepEqual(config3.deepspeed_config, { deepspeed_config_file: zero3Offload });
  t.regex(file.warnings[0], /DeepSpeed config \/nonexistent\/ds.json: cannot read it/);
  t.like((await writtenAndLaunched(config3)).strategy, { zeroStage: 3, offloadOptimizer: true, offloadParameters: true, mixedPrecision: "fp16" });

  // FSDP (asked only without DeepSpeed): full shard and offload.
  const fsdp = scriptedAsk(["MULTI_GPU", "1", "2", "all", false, true, true, true, "bf16", "1"]);
  const config4 = await askClusterConfig(fsdp.ask, 2);
  t.is(fsdp.answers.length, 0);
  t.like(config4, { distributed_type: "FSDP", gradient_accumulation_steps: 1 });
  t.deepEqual(config4.fsdp_config, { fsdp_version: 2, fsdp_reshard_after_forward: true, fsdp_offload_params: true });
  t.deepEqual(fsdp.asked.slice(5, 8), [
    "Do you want to use FullyShardedDataParallel?",
    "Do you want to enable resharding after forward (full shard, ZeRO stage 3)?",
    "Do you want to offload parameters and the optimizer state to CPU?",
  ]);
  const fsdpLaunched = await writtenAndLaunched(config4);
  t.deepEqual(fsdpLaunched.reread, config4);
  t.like(fsdpLaunched.strategy, { zeroStage: 3, offloadOptimizer: true, offloadParameters: true });
  const fsdp2 = scriptedAsk(["MULTI_GPU", "1", "2", "all", false, true, false, false, "no", "1"]);
  t.like((await writtenAndLaunched(await askClusterConfig(fsdp2.ask, 2))).strategy, { zeroStage: 2, offloadOptimizer: false });

  // On CPU processes there is nothing to offload to, so those questions are skipped.
  const cpu = scriptedAsk(["MULTI_CPU", "1", "2", true, false, "3", "1", false, "no"]);
  const config5 = await askClusterConfig(cpu.ask, 0);
  t.is(cpu.answers.length, 0);
  t.like(config5, { distributed_type: "DEEPSPEED", use_cpu: true });
  t.deepEqual(config5.deepspeed_config, { zero_stage: 3, gradient_accumulation_steps: 1 });
  t.like((await writtenAndLaunched(config5)).strategy, { zeroStage: 3, offloadOptimizer: false, offloadParameters: false });
});

test("a script's deepspeedPlugin takes the launcher's settings for the fields it leaves unset, as HF's does", (t) => {
  const launcher = { ACCELERATE_USE_DEEPSPEED: "true", ACCELERATE_DEEPSPEED_ZERO_STAGE: "3", ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE: "cpu" };
  const filled = strategyConfigOf({ deepspeedPlugin: { hfDsConfig: { zero_optimization: { stage3_param_persistence_threshold: 0 } } } }, launcher);
  t.like(filled, { zeroStage: 3, offloadOptimizer: true, paramPersistenceThreshold: 0 });
  t.like(strategyConfigOf({ deepspeedPlugin: { zeroStage: 1 } }, launcher), { zeroStage: 1, offloadOptimizer: true }, "the script's own value wins");
  t.like(strategyConfigOf({ deepspeedPlugin: { zeroStage: 1 } }, {}), { zeroStage: 1, offloadOptimizer: false });
});

test("a misspelled deepspeedPlugin or fsdpPlugin option is an Error naming it, as in a DeepSpeed JSON", (t) => {
  t.throws(() => new Accelerator({ cpu: true, deepspeedPlugin: { zeroStage: 3, ofloadParamDevice: "cpu" } as never }), {
    message: /^Accelerator: deepspeedPlugin has no option "ofloadParamDevice" \(did you mean "offloadParamDevice"\?\); its options are: zeroStage, /,
  });
  t.throws(() => new Accelerator({ cpu: true, fsdpPlugin: { cpuOfload: true } as never }), {
    message: /^Accelerator: fsdpPlugin has no option "cpuOfload" \(did you mean "cpuOffload"\?\)/,
  });
  t.throws(() => new Accelerator({ cpu: true, deepspeedPlugin: 3 as never }), { message: "Accelerator: deepspeedPlugin must be an object, got 3" });
});
