"""The reference training step in eager PyTorch, for scripts/bench-step.sh: Huginn's own modeling file
(raven_modeling_minimal.py, loaded from a `muninn export --format huginn-hf` directory exactly as a
user loads huginn-0125), fp32, a fixed (n, k) through `num_steps`, no activation checkpointing;
forward, loss, backward, clip_grad_norm_(1.0), AdamW, zero_grad. Prints one JSON line: the median
step time after the warm-up steps.

usage: ref_step.py HF_DIR --n N --k K --batch B --seq T --threads P --steps S [--warmup W]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("hf_dir")
    for name in ["n", "k", "batch", "seq", "threads", "steps"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, trust_remote_code=True, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (a.batch, a.seq + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    num_steps = torch.tensor([a.n, a.k])
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        out = model(x, labels=y, num_steps=num_steps)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    params = sum(t.numel() for t in model.parameters())
    tensors = sum(1 for _ in model.parameters())
    times.sort()
    print(json.dumps({"ms_per_step": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0],
                      "params": params, "tensors": tensors, "loss": out.loss.item()}))


if __name__ == "__main__":
    main()
