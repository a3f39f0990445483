// A small character-level GPT trained on the opening of Coriolanus (examples/data):
// prepared loaders, evaluation with gatherForMetrics, jsonl + TensorBoard trackers,
// a progress bar, a checkpoint per epoch and `--resume` from the latest one.
//   npx accelerate launch --cpu --num_processes 2 examples/gpt.ts runs/gpt --epochs 3
//   npx accelerate launch --cpu --num_processes 2 examples/gpt.ts runs/gpt --epochs 5 --resume
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Accelerator, arange, data, nn, noGrad, optim, tensor, tidy, type Tensor } from "../ts/index.js";

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    epochs: { type: "string", default: "3" },
    resume: { type: "boolean", default: false },
    context: { type: "string", default: "32" },
    width: { type: "string", default: "64" },
    layers: { type: "string", default: "2" },
    heads: { type: "string", default: "4" },
    batch: { type: "string", default: "16" },
    lr: { type: "string", default: "3e-3" },
  },
});
const config = {
  epochs: Number(flags.epochs),
  context: Number(flags.context),
  width: Number(flags.width),
  layers: Number(flags.layers),
  heads: Number(flags.heads),
  batch: Number(flags.batch),
  lr: Number(flags.lr),
};
const projectDir = positionals[0] ?? "runs/gpt";

class Block extends nn.Module {
  ln1: nn.LayerNorm;
  attn: nn.CausalSelfAttention;
  ln2: nn.LayerNorm;
  fc: nn.Linear;
  out: nn.Linear;
  constructor(width: number, heads: number) {
    super();
    this.ln1 = new nn.LayerNorm(width);
    this.attn = new nn.CausalSelfAttention(width, heads);
    this.ln2 = new nn.LayerNorm(width);
    this.fc = new nn.Linear(width, 4 * width);
    this.out = new nn.Linear(4 * width, width);
  }
  forward(x: Tensor): Tensor {
    const attended = x.add(this.attn.forward(this.ln1.forward(x)));
    return attended.add(this.out.forward(nn.functional.gelu(this.fc.forward(this.ln2.forward(attended)))));
  }
}

class CharGPT extends nn.Module {
  tok: nn.Embedding;
  pos: nn.Embedding;
  blocks: nn.ModuleList<Block>;
  ln: nn.LayerNorm;
  head: nn.Linear;
  constructor(vocab: number) {
    super();
    this.tok = new nn.Embedding(vocab, config.width);
    this.pos = new nn.Embedding(config.context, config.width);
    this.blocks = new nn.ModuleList(Array.from({ length: config.layers }, () => new Block(config.width, config.heads)));
    this.ln = new nn.LayerNorm(config.width);
    this.head = new nn.Linear(config.width, vocab);
  }
  /** Next-character logits `[batch, time, vocab]` for `tokens` `[batch, time]`. */
  forward(tokens: Tensor): Tensor {
    let x = this.tok.forward(tokens).add(this.pos.forward(arange(tokens.shape[1], undefined, 1, { device: tokens.device })));
    for (const block of this.blocks) x = block.forward(x);
    return this.head.forward(this.ln.forward(x));
  }
}

// Every window of context+1 characters (stride context/2): inputs and the next characters.
const text = readFileSync(new URL("./data/coriolanus.txt", import.meta.url), "utf8");
const chars = [...new Set(text)].sort();
const encode = (s: string) => [...s].map((c) => chars.indexOf(c));
const windows = (from: number, to: number) => {
  const ids = encode(text.slice(from, to));
  const starts: number[] = [];
  for (let s = 0; s + config.context + 1 <= ids.length; s += config.context / 2) starts.push(s);
  const x = tensor(starts.map((s) => ids.slice(s, s + config.context)), { dtype: "int64" });
  const y = tensor(starts.map((s) => ids.slice(s + 1, s + config.context + 1)), { dtype: "int64" });
  return new data.TensorDataset({ x, y });
};
const split = Math.floor(text.length * 0.9);

const accelerator = new Accelerator({
  seed: 1234,
  projectDir,
  automaticCheckpointNaming: true,
  totalLimit: 2,
  logWith: ["jsonl", "tensorboard"],
});
const net = new CharGPT(chars.length);
const optimizer = new optim.AdamW(net.parameters(), { lr: config.lr, weightDecay: 0.01 });
const trainLoader = new data.DataLoader(windows(0, split), { batchSize: config.batch, shuffle: true, seed: 1234 });
const evalLoader = new data.DataLoader(windows(split, text.length), { batchSize: config.batch });
const [model, opt, train, evaluation] = accelerator.prepare(net, optimizer, trainLoader, evalLoader);
const progressState = { epoch: 0, stateDict: () => ({ epoch: progressState.epoch }), loadStateDict: (s: { epoch: number }) => (progressState.epoch = s.epoch) };
accelerator.registerForCheckpointing(progressState);
if (flags.resume) {
  accelerator.loadState();
  accelerator.print(`resumed after epoch ${progressState.epoch}`);
}
accelerator.initTrackers("gpt", { ...config, vocab: chars.length, processes: accelerator.numProcesses });

let step = progressState.epoch * train.length;
for (let epoch = progressState.epoch + 1; epoch <= config.epochs; epoch++) {
  model.train();
  const bar = accelerator.progress(train, { desc: `epoch ${epoch}/${config.epochs}` });
  for (const { x, y } of bar) {
    const logits = model.forward(x);
    const loss = nn.functional.crossEntropy(logits.view([-1, chars.length]), y.view([-1]));
    accelerator.backward(loss);
    opt.step();
    opt.zeroGrad();
    step += 1;
    const value = loss.item();
    bar.update({ loss: value });
    accelerator.log({ "train/loss": value }, { step });
  }
  // Mean loss per evaluation window, every window counted once across processes.
  model.eval();
  let total = 0;
  let count = 0;
  noGrad(() => {
    for (const { x, y } of evaluation) {
      const perToken = nn.functional.crossEntropy(model.forward(x).view([-1, chars.length]), y.view([-1]), { reduction: "none" });
      const perWindow = accelerator.gatherForMetrics(perToken.view([x.shape[0], -1]).mean([1]));
      total += perWindow.sum().item();
      count += perWindow.shape[0];
    }
  });
  accelerator.log({ "eval/loss": total / count }, { step });
  accelerator.print(`epoch ${epoch}/${config.epochs}  eval loss ${(total / count).toFixed(4)} (${count} windows)`);
  progressState.epoch = epoch;
  accelerator.saveState();
}

// A short greedy continuation, to see what it learned.
if (accelerator.isMainProcess) {
  model.eval();
  const ids = encode("MENENIUS:\n");
  noGrad(() => {
    for (let i = 0; i < 60; i++) {
      const next = tidy(() => {
        const context = tensor([ids.slice(-config.context)], { dtype: "int64" }).to(undefined, accelerator.device);
        return model.forward(context).slice(1, -1).argmax(-1).item();
      });
      ids.push(next);
    }
  });
  accelerator.print(`sample: ${JSON.stringify(ids.map((i) => chars[i]).join(""))}`);
}
accelerator.endTraining();
