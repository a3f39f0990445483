// Deterministic memory: the README's plain loop and a tidy loop stay flat over thousands
// of steps; a prepared loader's step scope frees what a step made and keeps what users
// rely on; a freed tensor's later use says what freed it; handles cannot be forged.
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  Accelerator, Tensor, arange, cat, data, keep, liveTensors, manualSeed, nn, noGrad, ones, optim, randint, randn, stack, tidy, where, zeros,
} from "../ts/index.js";
import { settle } from "./helpers/gc.js";

type Probe = Record<number, { live: number; rss: number }>;

function runScript(path: string, args: string[], cwd: string): Probe {
  const out = spawnSync(process.execPath, ["--import", import.meta.resolve("@oxc-node/core/register"), path, ...args], {
    cwd,
    // One libtorch thread: on a busy 2-core machine a thread pool per process only contends.
    env: { ...process.env, OMP_NUM_THREADS: "1" },
    encoding: "utf8",
    timeout: 240_000,
  });
  if (out.status !== 0) throw new Error(`${path} failed (${out.status ?? out.signal}): ${out.stderr}`);
  return JSON.parse(out.stdout.trim().split("\n").pop() ?? "{}") as Probe;
}

const MiB = 2 ** 20;

/** The README's "Training loop" code block, as written there. */
function readmeLoop(): string {
  const readme = readFileSync(fileURLToPath(new URL("../README.md", import.meta.url)), "utf8");
  const section = readme.slice(readme.indexOf("## Training loop"));
  const block = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (!block) throw new Error("README.md: no ts block under ## Training loop");
  return block;
}

test.serial("the README's training loop, verbatim, holds live tensors and RSS flat over 5 000 steps", (t) => {
  const loop = readmeLoop();
  t.false(/tidy|dispose|detach/.test(loop), "the README loop carries no memory boilerplate");
  const index = pathToFileURL(fileURLToPath(new URL("../ts/index.ts", import.meta.url))).href;
  // What the README leaves to the reader: 320 000 images (one row, repeated, so the data
  // costs nothing) for 5 000 batches of 64, and a probe after each step.
  const prelude = [
    `import { randn as __randn, randint as __randint, liveTensors as __live } from ${JSON.stringify(index)};`,
    "const images = __randn([1, 784]).expand([320_000, 784]);",
    "const labels = __randint(0, 10, [320_000]);",
    "const __seen: Record<number, { live: number; rss: number }> = {};",
    "let __step = 0;",
    "const __probe = () => { __step += 1; if (__step === 100 || __step === 5000) __seen[__step] = { live: __live(), rss: process.memoryUsage().rss }; };",
  ].join("\n");
  const body = loop.replace(/from "accelerate-ts"/, `from ${JSON.stringify(index)}`).replace("opt.zeroGrad();", "opt.zeroGrad(); __probe();");
  t.not(body, loop.replace(/from "accelerate-ts"/, `from ${JSON.stringify(index)}`), "the probe found its place");
  const dir = mkdtempSync(join(tmpdir(), "acc-readme-loop-"));
  const script = join(dir, "train.mts");
  writeFileSync(script, `${prelude}\n${body}\nconsole.log(JSON.stringify(__seen));\n`);
  const seen = runScript(script, [], dir);
  t.is(seen[5000].live, seen[100].live, "as many live tensors at step 5 000 as at step 100");
  const grown = (seen[5000].rss - seen[100].rss) / MiB;
  t.true(grown < 20, `RSS grew by ${grown.toFixed(1)} MiB from step 100 to 5 000`);
});

test.serial("a tidy training step without a loader holds live tensors and RSS flat over 20 000 steps", (t) => {
  const fixture = fileURLToPath(new URL("fixtures/memory/tidy-loop.ts", import.meta.url));
  const seen = runScript(fixture, ["20000"], tmpdir());
  t.is(seen[20000].live, seen[100].live);
  const grown = (seen[20000].rss - seen[100].rss) / MiB;
  t.true(grown < 20, `RSS grew by ${grown.toFixed(1)} MiB from step 100 to 20 000`);
});

function setup(options: { stepScope?: boolean } = {}) {
  manualSeed(0);
  const acc = new Accelerator({ cpu: true, ...options });
  const net = new nn.Sequential(new nn.Linear(4, 8), new nn.ReLU(), new nn.Linear(8, 2));
  const x = randn([24, 4]);
  const y = randint(0, 2, [24]);
  const [model, opt, loader, evalLoader] = acc.prepare(
    net,
    new optim.AdamW(net.parameters(), { lr: 0.01 }),
    new data.DataLoader(new data.TensorDataset({ x, y }), { batchSize: 4 }),
    new data.DataLoader(new data.TensorDataset({ x, y }), { batchSize: 8 }),
  );
  return { acc, model, opt, loader, evalLoader };
}

test.serial("a prepared loop frees each step's tensors; numbers, parameters, gradients and optimizer state survive", async (t) => {
  const { acc, model, opt, loader } = setup();
  await settle();
  const before = liveTensors();
  const losses: number[] = [];
  const outputs: Tensor[] = [];
  let grads: Tensor[] = [];
  for (const { x, y } of loader) {
    const logits = model.forward(x);
    const loss = nn.functional.crossEntropy(logits, y);
    acc.backward(loss);
    grads = model.parameters().map((p) => p.grad as Tensor);
    opt.step();
    losses.push(loss.item());
    outputs.push(logits);
  }
  t.is(losses.length, 6);
  t.true(losses.every(Number.isFinite));
  t.is(liveTensors(), before, "nothing a step made is alive after the loop");
  t.true(outputs.every((o) => o.isDisposed));
  t.true(model.parameters().every((p) => !p.isDisposed && p.grad !== null), "parameters and their gradients survive");
  t.true(grads.every((g) => g.isDisposed), "only the gradient wrappers a step made were freed");
  const state = opt.stateDict().state;
  t.true(Object.keys(state).length > 0 && Object.values(state).every((s) => !s.isDisposed), "optimizer state survives");
  t.notThrows(() => opt.step(), "the optimizer steps again after the loop");
});

test.serial("using a tensor after its step says which step freed it and how to keep it", (t) => {
  const { model, loader } = setup();
  const kept: Tensor[] = [];
  let last: Tensor | undefined;
  for (const { x } of loader) {
    last = model.forward(x).sum();
    kept.push(keep(last.detach()));
  }
  const error = t.throws(() => last?.item());
  t.is(
    error?.message,
    "item: the tensor was freed at the end of step 6 by the prepared loader; keep() it to use it later, or create it before the loop",
  );
  t.throws(() => ones([1]).add(last as Tensor), { message: /^add: the tensor was freed at the end of step 6 by the prepared loader/ });
  t.is(kept.length, 6);
  t.true(kept.every((k) => Number.isFinite(k.item())), "keep() exempts a tensor from the step scope");
  for (const k of kept) k.dispose();

  const inner = tidy(() => {
    const temporary = ones([2]).mul(3);
    return { temporary, result: temporary.sum() };
  });
  t.is(inner.result.item(), 6);
  const dropped = tidy(() => {
    const made = ones([2]);
    made.add(1);
    return [made.sum().item(), made] as const;
  });
  t.is(dropped[0], 2);
  t.false(dropped[1].isDisposed, "a tidy keeps tensors it returns inside arrays");
  let leaked: Tensor | undefined;
  tidy(() => {
    leaked = ones([2]);
  });
  t.throws(() => leaked?.sum(), { message: /^sum: the tensor was freed at the end of the tidy\(\) that created it/ });
});

test.serial("running sums kept across steps, a running total made before the loop, and accelerator.keep", (t) => {
  const { acc, model, loader } = setup();
  let total = zeros([]);
  const best: Tensor[] = [];
  for (const { x } of loader) {
    const loss = model.forward(x).pow(2).mean();
    const next = acc.keep(total.add(loss.detach()));
    total.dispose();
    total = next;
    if (best.length === 0) best.push(...acc.keep(model.parameters().map((p) => p.detach().clone())));
  }
  t.true(Number.isFinite(total.item()));
  t.is(best.length, 4);
  t.true(best.every((b) => !b.isDisposed));
});

test.serial("evaluation loops, nested loops over two prepared loaders, and gatherForMetrics follow the same rule", async (t) => {
  const { acc, model, opt, loader, evalLoader } = setup();
  await settle();
  const before = liveTensors();
  let evaluations = 0;
  let trainSteps = 0;
  for (const { x, y } of loader) {
    const loss = nn.functional.crossEntropy(model.forward(x), y);
    acc.backward(loss);
    opt.step();
    opt.zeroGrad();
    trainSteps += 1;
    if (trainSteps % 3 === 0) {
      let correct = 0;
      for (const batch of evalLoader) {
        const predictions = noGrad(() => model.forward(batch.x).argmax(-1));
        correct += acc.gatherForMetrics(predictions.eq(batch.y)).sum().item();
      }
      evaluations += 1;
      t.true(correct >= 0 && correct <= 24);
    }
    t.false(loss.isDisposed, "an inner evaluation loop does not free the outer step's tensors");
    t.is(loss.item(), loss.item());
  }
  t.is(evaluations, 2);
  t.is(liveTensors(), before);
});

test.serial("breaking out of a prepared loop frees the last step; stepScope: false restores the old behaviour", (t) => {
  const scoped = setup();
  let first: Tensor | undefined;
  for (const { x } of scoped.loader) {
    first = x.mul(2);
    break;
  }
  t.true(first?.isDisposed);

  const unscoped = setup({ stepScope: false });
  const made: Tensor[] = [];
  for (const { x } of unscoped.loader) made.push(x.mul(2));
  t.true(made.every((m) => !m.isDisposed), "without a step scope, what the loop made stays alive");
  for (const m of made) m.dispose();

  const acc = new Accelerator({ cpu: true });
  const [perLoader] = acc.prepare(new data.DataLoader(new data.TensorDataset({ x: arange(4) }), { batchSize: 2, stepScope: false }));
  const doubled = Array.from(perLoader, (b) => b.x.mul(2));
  t.true(doubled.every((d) => !d.isDisposed), "stepScope: false on the loader wins over the Accelerator's default");
});

test.serial("a module made inside a step keeps its parameters; a custom collate's tensors are freed with the step", async (t) => {
  const acc = new Accelerator({ cpu: true });
  const samples = { length: 8, get: (i: number) => ({ v: i }) };
  const [loader] = acc.prepare(new data.DataLoader(samples, { batchSize: 2, collate: (s) => ({ v: arange(s.length).add(s[0].v) }) }));
  await settle();
  const before = liveTensors();
  let layer: nn.Linear | undefined;
  const batches: Tensor[] = [];
  for (const { v } of loader) {
    layer ??= new nn.Linear(2, 1);
    layer.forward(v.to("float32").reshape([1, 2]));
    batches.push(v);
  }
  t.true(batches.every((b) => b.isDisposed), "the custom collate's tensors were freed");
  t.false(layer?.weight.isDisposed);
  t.is(liveTensors(), before + 2, "only the layer's weight and bias remain");
});

test("a BigInt, a look-alike object or a hand-made Tensor is never taken for a tensor", (t) => {
  const a = ones([2]);
  const b = ones([2]).mul(5);
  t.throws(() => a.add(5n as unknown as Tensor), { instanceOf: TypeError, message: /^add: expected a Tensor or a number, got the BigInt 5/ });
  t.throws(() => a.add((2n ** 64n + 3n) as unknown as Tensor), { instanceOf: TypeError });
  t.throws(() => a.matmul({ _native: b._native } as unknown as Tensor), { instanceOf: TypeError, message: /^matmul: expected a Tensor, got Object/ });
  t.throws(() => nn.functional.relu({ _native: b._native } as unknown as Tensor), { instanceOf: Error, message: /expected a Tensor, got Object/ });
  t.throws(() => new Tensor(b._native), { instanceOf: TypeError, message: /not by new Tensor\(\)/ });
  t.deepEqual(b.toArray(), [5, 5], "nothing aliased or freed b");
});

test("a getter that disposes a tensor while a call converts its arguments gives an Error, not a crash", (t) => {
  const calls: Record<string, (a: Tensor, other: Tensor) => Tensor> = {
    add: (a, other) => a.add(other),
    matmul: (a, other) => a.matmul(other),
    cat: (a, other) => cat([a, other]),
    stack: (a, other) => stack([a, other]),
    where: (a, other) => where(ones([2, 2]).gt(0), a, other),
    mseLoss: (a, other) => nn.functional.mseLoss(a, other),
  };
  for (const [name, call] of Object.entries(calls)) {
    const a = ones([2, 2]);
    const b = ones([2, 2]);
    const sneaky = Object.create(Tensor.prototype, {
      _native: {
        get() {
          a.dispose();
          return b._native;
        },
      },
    }) as Tensor;
    t.throws(() => call(a, sneaky), { message: /disposed/ }, name);
    t.deepEqual(b.toArray(), [[1, 1], [1, 1]], `${name}: b is untouched`);
  }
});
