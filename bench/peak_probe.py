"""Where GPT peak memory differences come from: the reference GPT (from
shared/bench/hf_baseline.py) in a plain PyTorch bf16-autocast loop, 10 steps, with
AdamW's default (foreach) and with fused=True, and optionally with the CUDA
allocator's expandable segments. Prints one JSON line per variant.
  python3 peak_probe.py [--ref DIR]   (DIR holds hf_baseline.py; default ../ref)"""
import argparse, json, os, subprocess, sys

VARIANTS = [("foreach", ""), ("fused", ""), ("foreach", "expandable_segments:True"), ("fused", "expandable_segments:True")]


def one(ref, optimizer):
    sys.path.insert(0, ref)
    import torch
    from hf_baseline import GPT
    torch.manual_seed(0)
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=optimizer == "fused")
    x = torch.randint(0, 50304, (8, 1025), device="cuda")
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    print(json.dumps({"optimizer": optimizer, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                      "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                      "at_rest_mib": round(torch.cuda.memory_allocated() / 2**20, 1)}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ref", default="../ref")
    p.add_argument("--one", choices=["foreach", "fused"])
    a = p.parse_args()
    if a.one:
        one(a.ref, a.one)
    else:
        for optimizer, conf in VARIANTS:
            env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=conf)
            subprocess.run([sys.executable, __file__, "--ref", a.ref, "--one", optimizer], env=env, check=False)
