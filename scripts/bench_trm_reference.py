"""Steps/s of the reference TRM code on Muninn's tiny 6×6 recipe (configs/trm-sudoku6.toml).

  python scripts/bench_trm_reference.py --repo PATH/TinyRecursiveModels --data DIR --steps N --threads T

The reference's own model and loss head (models/recursive_reasoning/trm.py, models/losses.py) and its
sign-SGD for the puzzle table (models/sparse_embedding.py, world size 1), trained one supervision
step per optimizer step as pretrain.py's train_batch does: loss / global batch, backward,
AdamATan2, sign-SGD, EMA. AdamATan2 is the formula of the CUDA-only `adam-atan2` package written in
torch (that package does not install here). Prints one line: `reference_steps_per_s X`.
"""

import argparse
import csv
import sys
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repo", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=110)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    sys.path.insert(0, a.repo)
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
    from models.losses import ACTLossHead
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    rows = list(csv.DictReader(open(f"{a.data}/train.csv")))
    enc = lambda s: [1 if c == "." else int(c) + 1 for c in s]
    inputs = torch.tensor([enc(r["question"]) for r in rows], dtype=torch.int32)
    labels = torch.tensor([enc(r["answer"]) for r in rows], dtype=torch.int32)
    B, L = 32, inputs.shape[1]
    cfg = dict(
        batch_size=B, seq_len=L, puzzle_emb_ndim=64, num_puzzle_identifiers=1, vocab_size=8,
        H_cycles=2, L_cycles=2, H_layers=1, L_layers=2, hidden_size=64, expansion=4.0, num_heads=2,
        pos_encodings="none", halt_max_steps=6, halt_exploration_prob=0.1, forward_dtype="float32",
        mlp_t=True, puzzle_emb_len=4, no_ACT_continue=True,
    )
    model = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(cfg), "stablemax_cross_entropy").train()
    params = list(model.parameters())
    state = [(torch.zeros_like(q), torch.zeros_like(q)) for q in params]
    ema = [q.detach().clone() for q in params]
    emb_opt = CastedSparseEmbeddingSignSGD_Distributed(
        model.model.puzzle_emb.buffers(), lr=1e-3, weight_decay=0.1, world_size=1
    )
    lr, wd, (b1, b2) = 1e-3, 0.1, (0.9, 0.95)
    g = torch.Generator().manual_seed(0)
    carry = None
    for step in range(1, a.steps + 1):
        if step == a.warmup + 1:
            start = time.perf_counter()
        idx = torch.randint(0, len(rows), (B,), generator=g)
        batch = dict(inputs=inputs[idx], labels=labels[idx], puzzle_identifiers=torch.zeros(B, dtype=torch.int32))
        if carry is None:
            carry = model.initial_carry(batch)
        carry, loss, _, _, _ = model(return_keys=[], carry=carry, batch=batch)
        ((1 / B) * loss).backward()
        lr_t = lr * min(1.0, step / 200)
        with torch.no_grad():
            for q, (m, v) in zip(params, state):
                q.mul_(1 - lr_t * wd)
                m.lerp_(q.grad, 1 - b1)
                v.lerp_(q.grad.square(), 1 - b2)
                c1, c2 = 1 - b1**step, 1 - b2**step
                q.sub_(lr_t / c1 * torch.atan2(m, v.sqrt() / c2**0.5))
                q.grad = None
            for group in emb_opt.param_groups:
                group["lr"] = lr_t
            emb_opt.step()
            emb_opt.zero_grad()
            for e, q in zip(ema, params):
                e.lerp_(q, 1 - 0.995)
    secs = time.perf_counter() - start
    print(f"reference_steps_per_s {(a.steps - a.warmup) / secs:.4f}")


if __name__ == "__main__":
    main()
