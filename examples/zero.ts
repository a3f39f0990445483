// Trains an MLP classifier with ZeRO sharding: each process keeps only its partition of
// the optimizer state (stage 1) and of the gradients (stage 2); prints what every process
// holds and the accuracy. Run it on several processes, choosing the stage at launch:
//   npx accelerate launch --cpu --num_processes 2 --use_deepspeed --zero_stage 2 examples/zero.ts
// (without --use_deepspeed it trains as plain data parallelism, for comparison).
import { Accelerator, data, manualSeed, nn, optim, randn } from "../ts/index.js";

const SAMPLES = 4096;
manualSeed(0);
// Two Gaussian blobs per class, 4 classes in 32 dimensions.
const centres = randn([4, 32]).mul(2);
const labels = randn([SAMPLES]).abs().mul(1.3).floor().clamp(0, 3).to("int64");
const points = centres.indexSelect(0, labels).add(randn([SAMPLES, 32]));

const accelerator = new Accelerator({ seed: 0 });
const net = new nn.Sequential(new nn.Linear(32, 256), new nn.ReLU(), new nn.Linear(256, 256), new nn.ReLU(), new nn.Linear(256, 4));
const [model, opt, loader] = accelerator.prepare(
  net,
  new optim.AdamW(net.parameters(), { lr: 1e-3 }),
  new data.DataLoader(new data.TensorDataset({ x: points, y: labels }), { batchSize: 64, shuffle: true }),
);
for (let epoch = 0; epoch < 3; epoch++) {
  for (const { x, y } of loader) {
    accelerator.backward(nn.functional.crossEntropy(model.forward(x), y));
    accelerator.clipGradNorm(model.parameters(), 1.0);
    opt.step();
    opt.zeroGrad();
  }
}
const held = accelerator.gatherObject([{ rank: accelerator.processIndex, ...accelerator.stateBytes() }]);
let correct = 0;
for (const { x, y } of loader) correct += accelerator.gatherForMetrics(model.forward(x).argmax(-1).eq(y)).sum().item();
const strategy = accelerator.strategy.name;
accelerator.print(JSON.stringify({ strategy, accuracy: correct / SAMPLES, held }));
accelerator.endTraining();
