"""The GPT family's Hugging Face references, for tests/hf_llama.rs.

  make TYPE DIR    a tiny random LlamaForCausalLM / Qwen2ForCausalLM / Olmo2ForCausalLM, made and
                   saved by transformers (every weight, norms and biases included, moved off its init)
  logits DIR --tokens 1,2,3 --out FILE
                   transformers' own logits [1, T, V] of DIR (no remote code), as safetensors
"""

import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

SHAPE = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
)


def make(kind, out, seed):
    torch.manual_seed(seed)
    extra = {}
    if kind == "llama":
        # Llama-3's frequency-dependent RoPE scaling, with wavelengths on both sides of the band.
        extra = dict(
            rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=16),
            tie_word_embeddings=False,
        )
    elif kind == "qwen2":
        extra = dict(tie_word_embeddings=True, use_sliding_window=False)
    elif kind == "olmo2":
        extra = dict(tie_word_embeddings=False)
    cfg = AutoConfig.for_model(kind, **SHAPE, **extra)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)


def logits(path, tokens, out):
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.tensor([[int(t) for t in tokens.split(",")]])
    with torch.no_grad():
        out_logits = model(ids).logits.float().contiguous()
    save_file({"logits": out_logits}, out)
    print(type(model).__name__)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("kind", choices=["llama", "qwen2", "olmo2"])
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=0)
    lg = sub.add_parser("logits")
    lg.add_argument("dir")
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "make":
        make(a.kind, a.out, a.seed)
    else:
        logits(a.dir, a.tokens, a.out)


if __name__ == "__main__":
    main()
