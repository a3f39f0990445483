// Two forwards under autocast with the weights changed between them, each run backward only
// after both (so the second runs while the first one's graph holds what it saved), beside each
// forward and its backward alone on `alone`, a copy of `net` given the same weights each time.
import { nn, noGrad, type Accelerator, type Tensor } from "../../ts/index.js";

export interface Interleaved {
  outputs: [Tensor, Tensor];
  gradients: [Tensor[], Tensor[]];
  wantOutputs: [Tensor, Tensor];
  wantGradients: [Tensor[], Tensor[]];
}

// The parameters' gradients of `y.sum()`, as float32 on the CPU.
export function gradientsOf(m: nn.Module, y: Tensor): Tensor[] {
  m.zeroGrad();
  y.to("float32").sum().backward();
  return m.parameters().map((p) => p.grad!.to("float32", "cpu"));
}

export function interleavedForwards(acc: Accelerator, net: nn.Module, alone: nn.Module, x1: Tensor, x2: Tensor): Interleaved {
  alone.loadStateDict(net.stateDict());
  const y1 = acc.autocast(() => net.forward(x1) as Tensor);
  noGrad(() => net.parameters().forEach((p) => nn.init.normal_(p, { std: 0.05 })));
  const y2 = acc.autocast(() => net.forward(x2) as Tensor);
  const [g1, g2] = [gradientsOf(net, y1), gradientsOf(net, y2)];
  const want1 = acc.autocast(() => alone.forward(x1) as Tensor);
  const w1 = gradientsOf(alone, want1);
  alone.loadStateDict(net.stateDict());
  const want2 = acc.autocast(() => alone.forward(x2) as Tensor);
  const w2 = gradientsOf(alone, want2);
  return { outputs: [y1, y2], gradients: [g1, g2], wantOutputs: [want1, want2], wantGradients: [w1, w2] };
}
