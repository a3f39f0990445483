// Checkpoint files: sharded weights, the safetensors format Python reads and
// writes, state files with nested tensors, and atomic directory replacement.
import test from "ava";
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { Accelerator, arange, libtorch, tensor, randn } from "../ts/index.js";
import {
  loadSafetensors, loadStateFiles, loadWeights, parseSize, saveSafetensors, saveStateFiles, saveWeights,
} from "../ts/checkpoint.js";

const scratch = () => mkdtempSync(join(tmpdir(), "acc-ckpt-"));

test("weights sharded into 3 files load back equal", (t) => {
  const dir = scratch();
  const weights = { "a.weight": randn([10, 10]), "b.weight": randn([10, 10]), "c.weight": randn([10, 10]), "c.bias": randn([10]) };
  const files = saveWeights(weights, dir, 500); // 400 bytes per matrix: one per shard
  t.deepEqual(files, [
    "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
    "model.safetensors.index.json",
  ]);
  const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
  t.is(index.metadata.total_size, 1240);
  t.deepEqual(Object.keys(index.weight_map), ["a.weight", "b.weight", "c.bias", "c.weight"]);
  t.is(index.weight_map["c.bias"], "model-00003-of-00003.safetensors");
  const loaded = loadWeights(dir);
  t.deepEqual(Object.keys(loaded).sort(), Object.keys(weights).sort());
  for (const [name, w] of Object.entries(weights)) t.true(loaded[name].eq(w).logicalNot().sum().item() === 0, name);
  saveWeights(weights, dir, "1GB");
  t.deepEqual(readdirSync(dir).sort(), ["model.safetensors"], "a later unsharded save removes stale shards");
});

/** Reads a safetensors file the way Python's `safetensors` does: u64 header length, JSON header, raw data. */
function readByHand(path: string) {
  const bytes = readFileSync(path);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"));
  return { header, data: bytes.subarray(8 + headerLength) };
}

test("files follow the safetensors format that Python reads", (t) => {
  const path = join(scratch(), "t.safetensors");
  saveSafetensors(path, { w: tensor([[1, 2], [3, 4]], { dtype: "float32" }), n: tensor([7], { dtype: "int64" }) });
  const { header, data } = readByHand(path);
  t.deepEqual(header.__metadata__, { format: "pt" });
  t.is(header.w.dtype, "F32");
  t.deepEqual(header.w.shape, [2, 2]);
  const [start, end] = header.w.data_offsets;
  t.deepEqual(Array.from(new Float32Array(data.buffer.slice(data.byteOffset + start, data.byteOffset + end))), [1, 2, 3, 4]);
  t.is(header.n.dtype, "I64");
});

test("files written like Python's safetensors load", (t) => {
  // What `safetensors.torch.save_file({"x": torch.tensor([1.5, -2.0], dtype=torch.float64)}, path)` writes.
  const header = Buffer.from(JSON.stringify({ x: { dtype: "F64", shape: [2], data_offsets: [0, 16] } }));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  const path = join(scratch(), "py.safetensors");
  writeFileSync(path, Buffer.concat([size, header, Buffer.from(new Float64Array([1.5, -2]).buffer)]));
  const loaded = loadSafetensors(path);
  t.is(loaded.x.dtype, "float64");
  t.deepEqual(loaded.x.toArray(), [1.5, -2]);
  t.throws(() => loadSafetensors(join(scratch(), "missing.safetensors")), { message: /^loadSafetensors: reading .*missing\.safetensors/ });
});

test("state files keep nested tensors, numbers and infinities", (t) => {
  const base = join(scratch(), "state");
  const state = { step: 3, groups: [{ lr: 0.1, best: Infinity, params: [0, 1] }], tensors: { "0": { m: arange(3) } }, flag: true };
  saveStateFiles(base, state);
  const back = loadStateFiles(base) as typeof state;
  t.is(back.step, 3);
  t.deepEqual(back.groups, [{ lr: 0.1, best: Infinity, params: [0, 1] }]);
  t.deepEqual(back.tensors["0"].m.toArray(), [0, 1, 2]);
  t.true(back.flag);
});

test("a failed saveState leaves the previous checkpoint intact", (t) => {
  const dir = join(scratch(), "ckpt");
  const acc = new Accelerator({ cpu: true });
  let failing = false;
  acc.registerForCheckpointing({
    stateDict: () => {
      if (failing) throw new Error("crash mid-save");
      return { version: 1 };
    },
    loadStateDict: () => {},
  });
  acc.saveState(dir);
  const before = readFileSync(join(dir, "custom_checkpoint_0.json"), "utf8");
  failing = true;
  t.throws(() => acc.saveState(dir), { message: "crash mid-save" });
  t.is(readFileSync(join(dir, "custom_checkpoint_0.json"), "utf8"), before);
  failing = false;
  acc.saveState(dir);
  t.deepEqual(readdirSync(join(dir, "..")), ["ckpt"], "no staging or previous directories left behind");
});

test("sizes parse like Hugging Face's", (t) => {
  t.is(parseSize("10GB"), 10e9);
  t.is(parseSize("500MB"), 500e6);
  t.is(parseSize("2GiB"), 2 * 2 ** 30);
  t.is(parseSize(1234), 1234);
  t.throws(() => parseSize("lots"), { message: /^saveModel: cannot read the size "lots"/ });
});

/** The Python next to the libtorch in use (the provisioned virtualenv has `safetensors`). */
function python(): string {
  return join(libtorch.dir, "..", "..", "..", "..", "bin", "python");
}

test("Python's safetensors reads our files and we read its files", (t) => {
  const dir = scratch();
  saveSafetensors(join(dir, "ours.safetensors"), {
    w: tensor([[1.5, -2], [3, 4]], { dtype: "float32" }),
    h: tensor([0.5, 1], { dtype: "bfloat16" }),
    n: tensor([7, -8], { dtype: "int64" }),
  });
  const script = [
    "import json, sys, torch",
    "from safetensors.torch import load_file, save_file",
    "d = load_file(sys.argv[1] + '/ours.safetensors')",
    "print(json.dumps({k: [str(v.dtype), v.float().tolist()] for k, v in sorted(d.items())}))",
    "save_file({'x': torch.tensor([[1, 2, 3]], dtype=torch.int32), 'y': torch.tensor([0.25], dtype=torch.float16)}, sys.argv[1] + '/theirs.safetensors')",
  ].join("\n");
  const run = spawnSync(python(), ["-c", script, dir], { encoding: "utf8" });
  t.is(run.status, 0, run.stderr);
  t.deepEqual(JSON.parse(run.stdout), {
    h: ["torch.bfloat16", [0.5, 1]],
    n: ["torch.int64", [7, -8]],
    w: ["torch.float32", [[1.5, -2], [3, 4]]],
  });
  const theirs = loadSafetensors(join(dir, "theirs.safetensors"));
  t.is(theirs.x.dtype, "int32");
  t.deepEqual(theirs.x.toArray(), [[1, 2, 3]]);
  t.is(theirs.y.dtype, "float16");
  t.deepEqual(theirs.y.toArray(), [0.25]);
});
