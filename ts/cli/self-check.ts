// The script `accelerate test` launches on every rank: checks the rank
// environment, creates an Accelerator, computes on its device and, where
// multi-process support exists, runs a collective. Exits non-zero on failure.
import { Accelerator, manualSeed, randn, tensor } from "../index.js";

const failures: string[] = [];
const notes: string[] = [];
const checked = ["rank environment", "tensor ops"];
function check(condition: boolean, what: string): void {
  if (!condition) failures.push(what);
}

const env = (name: string): number => Number(process.env[name]);
const rank = env("RANK");
const worldSize = env("WORLD_SIZE");
const localRank = env("LOCAL_RANK");
const localWorldSize = env("LOCAL_WORLD_SIZE");
check(Number.isInteger(worldSize) && worldSize >= 1, `WORLD_SIZE=${process.env.WORLD_SIZE} is a positive integer`);
check(Number.isInteger(rank) && rank >= 0 && rank < worldSize, `0 <= RANK=${process.env.RANK} < WORLD_SIZE`);
check(Number.isInteger(localRank) && localRank >= 0 && localRank < localWorldSize, `0 <= LOCAL_RANK=${process.env.LOCAL_RANK} < LOCAL_WORLD_SIZE=${process.env.LOCAL_WORLD_SIZE}`);
check(worldSize % localWorldSize === 0, "WORLD_SIZE is a multiple of LOCAL_WORLD_SIZE");
check(rank % localWorldSize === localRank, "RANK and LOCAL_RANK agree");
check(!!process.env.MASTER_ADDR && Number(process.env.MASTER_PORT) > 0, "MASTER_ADDR and MASTER_PORT are set");

let accelerator: Accelerator | undefined;
try {
  accelerator = new Accelerator();
} catch (error) {
  // Until the c10d collectives land, the Accelerator refuses WORLD_SIZE > 1: check the rest without it.
  if (worldSize > 1) notes.push(`collective skipped: ${(error as Error).message}`);
  else failures.push(`new Accelerator() threw: ${(error as Error).message}`);
}
const device = accelerator?.device ?? "cpu";
if (accelerator) {
  check(accelerator.processIndex === rank, `accelerator.processIndex ${accelerator.processIndex} equals RANK ${rank}`);
  check(accelerator.numProcesses === worldSize, `accelerator.numProcesses ${accelerator.numProcesses} equals WORLD_SIZE ${worldSize}`);
}

// [[1, 2], [3, 4]] @ [[1], [1]] = [[3], [7]]; its sum is 10.
const product = tensor([[1, 2], [3, 4]], { device }).matmul(tensor([[1], [1]], { device }));
check(JSON.stringify(product.toArray()) === "[[3],[7]]", `matmul gives [[3],[7]], got ${JSON.stringify(product.toArray())}`);
check(product.sum().item() === 10, "sum gives 10");
manualSeed(1234);
const first = randn([4], { device }).toArray();
manualSeed(1234);
check(JSON.stringify(randn([4], { device }).toArray()) === JSON.stringify(first), "manualSeed makes randn repeatable");

if (accelerator && worldSize > 1) {
  // Sum of (rank + 1) over all ranks is W(W+1)/2.
  const total = accelerator.reduce(tensor([rank + 1], { dtype: "float32", device }), "sum").item();
  check(total === (worldSize * (worldSize + 1)) / 2, `reduce sum of rank+1 gives ${(worldSize * (worldSize + 1)) / 2}, got ${total}`);
  accelerator.waitForEveryone();
  checked.push(`a reduce over ${worldSize} processes`);
}

const who = `self-check rank ${rank}/${worldSize} on ${device}`;
for (const note of notes) console.log(`${who}: ${note}`);
if (failures.length > 0) {
  console.error(`${who}: FAILED:\n  ${failures.join("\n  ")}`);
  process.exitCode = 1;
} else {
  console.log(`${who}: ok (${checked.join(", ")})`);
}
