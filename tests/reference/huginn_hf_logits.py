"""Runs Huginn's reference modeling file on a `muninn export --format huginn-hf` directory and writes the
logits and final latent state, for comparison with `muninn forward`.

usage: huginn_hf_logits.py HF_DIR --tokens 1,2,3 --depth R --out FILE.safetensors

Loads the model exactly as a user of the released huginn-0125 would (AutoModelForCausalLM with
trust_remote_code), runs `num_steps=R` from `input_states = zeros`, fp32 on the CPU.
"""
import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("hf_dir")
    p.add_argument("--tokens", required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[int(t) for t in a.tokens.split(",")]])
    states = torch.zeros(1, ids.shape[1], model.config.n_embd)
    with torch.no_grad():
        out = model(ids, input_states=states, num_steps=a.depth)
    # latent_states is ln_f(final state); Muninn's `state` is the state before ln_f, so compare logits
    # here and the normalised state separately.
    save_file({"logits": out.logits.float().contiguous(), "latent_ln_f": out.latent_states.float().contiguous()}, a.out)


if __name__ == "__main__":
    main()
