"""The `mlp` workload of shared/bench/WORKLOADS.md in plain PyTorch eager, for
machines without GPU or HF Accelerate (the CPU comparison of bench/mlp.ts).
Prints one JSON line."""
import argparse, json, time
import torch, torch.nn as nn, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=300)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--batch", type=int, default=512)
a = p.parse_args()
torch.manual_seed(0)
n = a.batch * (a.steps + a.warmup)
ds = TensorDataset(torch.randn(n, 784), torch.randint(0, 10, (n,)))
model = nn.Sequential(nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
dl = DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True)
t0 = None
for i, (x, y) in enumerate(dl):
    if i == a.warmup:
        t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
dt = time.perf_counter() - t0
print(json.dumps({"system": "pytorch-eager", "workload": "mlp", "precision": "no", "device": "cpu",
                  "threads": torch.get_num_threads(), "steps": a.steps, "samples_per_s": round(a.batch * a.steps / dt, 1),
                  "step_ms": round(1000 * dt / a.steps, 3), "loss_last": round(loss.item(), 4)}))
