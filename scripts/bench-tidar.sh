#!/usr/bin/env bash
# TiDAR on the default corpus: a TiDAR GPT (configs/tidar-tiny.toml) and its AR twin (the same shape,
# seed, batches, steps and recipe, next-token objective), then decoding on fixed prompts. Writes
# bench/tidar.md and bench/tidar.png (the TiDAR run's AR and diffusion training losses).
#
#   scripts/bench-tidar.sh [STEPS=800] [BATCH=16] [NEW=96]
# Needs the default corpus's tokenizer and 64-token shards (scripts/quickstart.sh makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-800}
BATCH=${2:-16}
NEW=${3:-96}
BIN=${MUNINN_BIN:-target/release/muninn}
OUT=${OUT:-bench/tidar.md}
[ -x "$BIN" ] || cargo build --release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
common=(--set run.dir="$scratch" --set train.max_steps="$STEPS" --set train.micro_batch_size="$BATCH"
  --set eval.interval=0 --set eval.max_rows=512 --set checkpoint.interval=0 --set log.interval=20
  --set log.tensorboard=false --set optimizer.warmup_steps=40)
"$BIN" train configs/tidar-tiny.toml "${common[@]}" >"$scratch/tidar.log" 2>&1
"$BIN" train configs/gpt-tiny.toml "${common[@]}" --set run.name=ar-twin --set model.block_size=256 \
  >"$scratch/ar.log" 2>&1
tidar=$(ls -d "$scratch"/tidar-tiny/checkpoints/step-* | tail -n 1)
ar=$(ls -d "$scratch"/ar-twin/checkpoints/step-* | tail -n 1)
"$BIN" curve "$scratch/tidar-tiny" --metrics ar_loss,diff_loss --out bench/tidar.png >/dev/null

prompts=("ROMEO:" "First Citizen:" "KING HENRY:" "To be, or not to be" "O, what a noble mind"
  "Now is the winter of our discontent" "Friends, Romans, countrymen," "JULIET:")
gen() { # checkpoint, then generate's options: one JSON line per prompt
  local ckpt=$1; shift
  for p in "${prompts[@]}"; do
    OMP_NUM_THREADS=1 "$BIN" generate "$ckpt" --prompt "$p" --max-tokens "$NEW" --threads 1 --json "$@"
  done
}
gen "$tidar" >"$scratch/plain.jsonl"
for k in 4 8; do
  for b in 0 0.5 1; do
    gen "$tidar" --tidar --draft "$k" --beta "$b" >"$scratch/tidar-k$k-b$b.jsonl"
  done
done
python3 - "$scratch" "$STEPS" "$BATCH" "$NEW" "$OUT" <<'PY'
import json, sys, os
scratch, steps, batch, new, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def metrics(name):
    rows = [json.loads(l) for l in open(os.path.join(scratch, name, "metrics.jsonl"))]
    last = rows[-1]
    first = rows[0]
    per_step = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return last, per_step
t, t_step = metrics("tidar-tiny")
a, a_step = metrics("ar-twin")
jl = lambda f: [json.loads(l) for l in open(os.path.join(scratch, f))]
plain = jl("plain.jsonl")
plain_tps = sum(r["tokens_per_s"] for r in plain) / len(plain)
lines = [
    "# TiDAR on the default corpus (`scripts/bench-tidar.sh`)",
    "",
    f"`configs/tidar-tiny.toml` (GPT d 128, 4 layers, 64-token rows, b = 8, α = 1, mask = `<|reserved_0|>`) and its",
    f"AR twin (`configs/gpt-tiny.toml`, same shape, seed, batches and recipe), {steps} steps of batch {batch} each, one",
    "process, CPU, fp32. Validation: 512 held-out rows, AR loss under the plain causal mask.",
    "",
    "| | AR twin | TiDAR |",
    "|---|---|---|",
    f"| held-out AR loss (nats/token) | {a['val_loss']:.4f} | {t['val_loss']:.4f} ({100 * (t['val_loss'] / a['val_loss'] - 1):+.1f} %) |",
    f"| held-out diffusion loss | – | {t['val_diff_loss']:.4f} |",
    f"| time per training step | {a_step:.3f} s | {t_step:.3f} s ({t_step / a_step:.2f}×) |",
    "",
    f"Decoding the TiDAR model: {len(plain)} fixed prompts, {new} new tokens each, one thread, batch 1. Plain",
    f"KV-cached greedy AR of the same checkpoint: {plain_tps:.0f} tokens/s.",
    "",
    "| draft k | β | accepted tokens per decode forward | tokens per forward (prefill included) | tokens/s | vs plain AR | equal to greedy AR |",
    "|---|---|---|---|---|---|---|",
]
for k in (4, 8):
    for b in ("0", "0.5", "1"):
        rs = jl(f"tidar-k{k}-b{b}.jsonl")
        acc = sum(r["mean_accepted"] for r in rs) / len(rs)
        tpf = sum(r["tokens_per_forward"] for r in rs) / len(rs)
        tps = sum(r["tokens_per_s"] for r in rs) / len(rs)
        same = sum(r["tokens"] == p["tokens"] for r, p in zip(rs, plain))
        lines.append(f"| {k} | {b} | {acc:.2f} | {tpf:.2f} | {tps:.0f} | {tps / plain_tps:.2f}× | {same} of {len(rs)} |")
lines += ["", "![TiDAR training losses](tidar.png)", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
