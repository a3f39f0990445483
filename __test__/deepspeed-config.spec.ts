// DeepSpeed JSON configs and the FSDP/DeepSpeed launcher settings: a config from HF's and
// DeepSpeed's documentation with "auto" values configures a run, keys that do not apply are
// named, misspellings get a suggestion, and launcher flags and config files reach the
// Accelerator through HF's environment variables.
import test from "ava";
import { readFileSync } from "node:fs";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { Accelerator, data, nn, optim, randint, randn, type DeepSpeedConfigJson } from "../ts/index.js";
import { parseClusterConfig } from "../ts/cli/config-file.js";
import { resolveLaunchPlan, type LaunchFlags } from "../ts/cli/launch-settings.js";
import { rankEnvironment } from "../ts/launch/plan.js";
import { readDeepSpeedConfig } from "../ts/strategy/deepspeed-config.js";
import { strategyConfigOf } from "../ts/strategy/index.js";

const example = fileURLToPath(new URL("./fixtures/deepspeed/zero2-auto.json", import.meta.url));
const exampleJson = (): DeepSpeedConfigJson => JSON.parse(readFileSync(example, "utf8")) as DeepSpeedConfigJson;
const noGpus = async (): Promise<number> => 0;

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
  const mismatched = new Accelerator({ cpu: true, deepspeedPlugin: { configFile: file } });
  const loader = new data.DataLoader(new data.TensorDataset({ x: randn([16, 4]) }), { batchSize: 4 });
  t.throws(() => mismatched.prepare(loader), { message: /train_micro_batch_size_per_gpu is 8 but the data loader's batchSize is 4/ });
  t.throws(() => new Accelerator({ cpu: true, gradientAccumulationSteps: 3, deepspeedPlugin: { hfDsConfig: { gradient_accumulation_steps: 2 } } }), {
    message: /gradientAccumulationSteps is 3 but the DeepSpeed config's gradient_accumulation_steps is 2/,
  });
});

test("misspelled keys are named with a suggestion; stage 3 and offload are Errors", (t) => {
  t.throws(() => readDeepSpeedConfig({ gradient_acumulation_steps: 2 }, "ds.json"), {
    message: 'DeepSpeed config ds.json: unknown key "gradient_acumulation_steps" (did you mean "gradient_accumulation_steps"?)',
  });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stag: 2 } }, "ds.json"), { message: /unknown key "stag" \(did you mean "stage"\?\)/ });
  t.throws(() => readDeepSpeedConfig({ fp16: { enabled: true, initial_scale_powr: 8 } }, "ds.json"), { message: /did you mean "initial_scale_power"/ });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stage: 3 } }, "ds.json"), { message: /zero_optimization.stage" 3 .* not available yet/ });
  t.throws(() => readDeepSpeedConfig({ zero_optimization: { stage: 2, offload_optimizer: { device: "cpu" } } }, "ds.json"), {
    message: /zero_optimization.offload_optimizer.device" "cpu": CPU\/NVMe offload is not available yet/,
  });
  t.deepEqual(readDeepSpeedConfig({ zero_optimization: { stage: 1, stage3_max_live_parameters: 1e9 } }, "ds.json").notUsed, ["zero_optimization.stage3_max_live_parameters (stage 3 only)"]);
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
  await t.throwsAsync(planEnv({ use_fsdp: true, fsdp_reshard_after_forward: "true" }), { message: /reshard_after_forward true \(full shard, ZeRO stage 3\) is not available yet/ });
  await t.throwsAsync(planEnv({ use_fsdp: true }), { message: /not available yet/ }, "FSDP2's default is full shard");
  await t.throwsAsync(planEnv({ deepspeed_config_file: example, zero_stage: "1" }), { message: /--zero_stage 1 disagrees with zero_optimization.stage 2/ });
  await t.throwsAsync(planEnv({ fsdp_version: "2" }), { message: /--fsdp_version needs --use_fsdp/ });
  t.throws(() => strategyConfigOf({}, { ACCELERATE_USE_FSDP: "true", FSDP_RESHARD_AFTER_FORWARD: "true" }), { message: /not available yet/ });
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
  t.throws(() => parseClusterConfig(YAML.parse("distributed_type: FSDP\nfsdp_config:\n  fsdp_reshard_after_forward: true\n"), "f.yaml"), { message: /fsdp_reshard_after_forward" is false \(true, FSDP's full shard, is ZeRO stage 3/ });
  t.throws(() => parseClusterConfig(YAML.parse("deepspeed_config:\n  zero_stag: 2\n"), "d.yaml"), { message: /unknown key "zero_stag" \(did you mean "zero_stage"\?\)/ });
  t.throws(() => parseClusterConfig(YAML.parse("deepspeed_config:\n  offload_optimizer_device: cpu\n"), "d.yaml"), { message: /offload_optimizer_device" is "none" \(CPU and NVMe offload are not available yet\)/ });
});
