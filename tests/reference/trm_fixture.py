"""Writes a TRM parity fixture from the reference code (tests/trm.rs runs it on every test run; model/tests/trm.rs reads the committed one).

  python tests/reference/trm_fixture.py --repo PATH/TinyRecursiveModels --variant mlp|att --out FILE

PATH is SamsungSAILMontreal/TinyRecursiveModels at e7b6871 (its model files need torch, pydantic and
einops). A tiny float32 model (4×4 sudoku shape: D 64, 2 layers, T = n = 2, P = 4, two puzzle ids)
is built from the reference's config dict with a fixed seed; the puzzle table and the q head are moved
off their zero init so every path shows. FILE holds the state dict under its own keys, the batch
(`batch.inputs`, `batch.puzzle_identifiers`) and, for K = 3 supervision steps in eval mode from the
initial carry, `step{k}.logits`, `.q_halt_logits`, `.q_continue_logits`, `.z_H`, `.z_L` (fp32);
and the first training-mode supervision step through the reference's loss head (`ACTLossHead` with
stablemax), loss divided by the batch before backward as its trainer does: `train.loss`, `.lm_loss`,
`.q_halt_loss` (float64) and `grad.<key>` of every parameter and of `inner.puzzle_emb.weights`
(the sparse table's gradient scattered to its rows).
"""

import argparse
import sys

import torch
from safetensors.torch import save_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repo", required=True)
    p.add_argument("--variant", choices=["mlp", "att"], required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    sys.path.insert(0, a.repo)
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1

    torch.manual_seed(0)
    torch.set_num_threads(1)
    B, L = 3, 16
    cfg = dict(
        batch_size=B, seq_len=L, puzzle_emb_ndim=64, num_puzzle_identifiers=2, vocab_size=6,
        H_cycles=2, L_cycles=2, H_layers=1, L_layers=2, hidden_size=64, expansion=4.0, num_heads=2,
        pos_encodings="none" if a.variant == "mlp" else "rope", halt_max_steps=6,
        halt_exploration_prob=0.1, forward_dtype="float32", mlp_t=a.variant == "mlp",
        puzzle_emb_len=4, no_ACT_continue=True, rms_norm_eps=1e-5, rope_theta=10000.0,
    )
    model = TinyRecursiveReasoningModel_ACTV1(cfg).eval()
    with torch.no_grad():
        model.inner.puzzle_emb.weights.copy_(0.5 * torch.randn_like(model.inner.puzzle_emb.weights))
        model.inner.q_head.weight.copy_(0.1 * torch.randn_like(model.inner.q_head.weight))
    batch = dict(
        inputs=torch.randint(1, 6, (B, L), dtype=torch.int32),
        labels=torch.randint(2, 6, (B, L), dtype=torch.int32),
        puzzle_identifiers=torch.tensor([0, 1, 0], dtype=torch.int32),
    )
    out = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    out["batch.inputs"] = batch["inputs"].long()
    out["batch.puzzle_identifiers"] = batch["puzzle_identifiers"].long()
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for k in range(3):
            carry, o = model(carry=carry, batch=batch)
            out[f"step{k}.logits"] = o["logits"].float().contiguous()
            out[f"step{k}.q_halt_logits"] = o["q_halt_logits"].float().contiguous()
            out[f"step{k}.q_continue_logits"] = o["q_continue_logits"].float().contiguous()
            out[f"step{k}.z_H"] = carry.inner_carry.z_H.float().contiguous()
            out[f"step{k}.z_L"] = carry.inner_carry.z_L.float().contiguous()
    # Training mode: every row starts from the reset carry; only this first step is deterministic.
    from models.losses import ACTLossHead
    head = ACTLossHead(model, "stablemax_cross_entropy").train()
    carry = head.initial_carry(batch)
    carry, loss, metrics, _, _ = head(return_keys=[], carry=carry, batch=batch)
    (loss / B).backward()
    out["batch.labels"] = batch["labels"].long()
    out["train.loss"] = loss.detach().double().reshape(1)
    out["train.lm_loss"] = metrics["lm_loss"].double().reshape(1)
    out["train.q_halt_loss"] = metrics["q_halt_loss"].double().reshape(1)
    for name, param in model.named_parameters():
        out[f"grad.{name}"] = param.grad.float().contiguous()
    emb = model.inner.puzzle_emb
    table = torch.zeros_like(emb.weights)
    table.index_add_(0, emb.local_ids.long(), emb.local_weights.grad.float())
    out["grad.inner.puzzle_emb.weights"] = table
    save_file(out, a.out)
    print(f"wrote {a.out}: {len(out)} tensors")


if __name__ == "__main__":
    main()
