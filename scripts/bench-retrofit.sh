#!/usr/bin/env bash
# Retrofitted recurrence at the tiny scale: pretrain a 6-layer `gpt` (configs/gpt-tiny.toml with
# n_layers = 6) on the default corpus, then from its final checkpoint run two arms at equal training
# tokens (same steps, batch, seed, data order, optimizer and schedule):
#   (a) continue: keep training the GPT as it is;
#   (b) retrofit: `muninn retrofit` it (prelude 0..2, core 3..5, coda 5..6: layer 2 dropped, a core of
#       two; random adapter as the paper) and train configs/retrofit-tiny.toml (1-sqrt curriculum to
#       r̄ = 8, k = 4, Muon).
# Reports the validation loss of the pretrained model, of (a), and of (b) at test-time depths 1-32,
# with wall time and FLOPs; writes bench/retrofit.md and bench/retrofit.png (`muninn compare`'s plot);
# OUT=FILE.md writes FILE.md and FILE.png instead.
#
#   scripts/bench-retrofit.sh [PRETRAIN_STEPS=3000] [STEPS=2000]
# About 20 minutes on 2 cores at the defaults. Prepares the default corpus if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAIN=${1:-3000}
STEPS=${2:-2000}
BIN=${MUNINN_BIN:-target/release/muninn}
OUT=${OUT:-bench/retrofit.md}
PNG=${OUT%.md}.png
[ -x "$BIN" ] || cargo build --release
MUNINN_BIN=$BIN scripts/default-data.sh >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
d=$scratch/runs
common=(--set run.dir="$d" --set log.tensorboard=false --set eval.max_rows=256)
# Both arms: Muon on the matrices, AdamW elsewhere, warmup-stable-decay, as configs/retrofit-tiny.toml.
arm=(--set train.max_steps="$STEPS" --set optimizer.kind=muon --set optimizer.lr=0.01
  --set optimizer.muon.adamw_lr=1e-3 --set optimizer.schedule=trapezoid --set optimizer.warmup_steps=40
  --set optimizer.cooldown_steps=$((STEPS / 5)) --set eval.interval=$((STEPS / 4))
  --set checkpoint.interval="$STEPS")
timed() { # log name, then the command; records its wall seconds in $scratch/NAME.s
  local name=$1; shift
  local t0=$SECONDS
  "$@" >"$scratch/$name.log" 2>&1 || { tail -n 20 "$scratch/$name.log" >&2; exit 1; }
  echo $((SECONDS - t0)) >"$scratch/$name.s"
}

echo "bench-retrofit: pretraining the 6-layer GPT for $PRETRAIN steps" >&2
timed pretrain "$BIN" train configs/gpt-tiny.toml "${common[@]}" --set run.name=pretrain \
  --set model.n_layers=6 --set train.max_steps="$PRETRAIN" --set train.threads=2 \
  --set optimizer.warmup_steps=100 --set eval.interval="$PRETRAIN" --set checkpoint.interval="$PRETRAIN"
src=$(ls -d "$d"/pretrain/checkpoints/step-* | tail -n 1)

echo "bench-retrofit: arm (a), continuing the GPT for $STEPS steps" >&2
timed continue "$BIN" train configs/gpt-tiny.toml "${common[@]}" "${arm[@]}" --set run.name=continue \
  --set model.n_layers=6 --set train.threads=2 --init-from "$src"

echo "bench-retrofit: arm (b), retrofitting it and training for $STEPS steps" >&2
"$BIN" retrofit "$src" --prelude 0..2 --core 3..5 --coda 5..6 --adapter-init random \
  --mean-recurrence 8 --backprop-depth 4 --out "$scratch/rf" >"$scratch/retrofit.log"
"$BIN" eval "$scratch/rf" --data .cache/datasets/shakespeare/b64 --seed 233 --depths 1,2,4,8,16,32 --max-rows 256 \
  --out "$scratch/rf-eval" >/dev/null
timed retrofit-train "$BIN" train configs/retrofit-tiny.toml "${common[@]}" "${arm[@]}" \
  --set run.name=retrofit --init-from "$scratch/rf"

"$BIN" compare "$d/pretrain" "$d/continue" "$d/retrofit" --plot "$PNG" --json "$scratch/compare.json" \
  >"$scratch/compare.txt"

python3 - "$scratch" "$PRETRAIN" "$STEPS" "$OUT" "$(basename "$PNG")" <<'PY'
import json, os, sys
scratch, pretrain, steps, out, png = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = {r["name"]: r for r in json.load(open(os.path.join(scratch, "compare.json")))}
secs = lambda n: int(open(os.path.join(scratch, n + ".s")).read())
start = json.load(open(os.path.join(scratch, "rf-eval", "eval.json")))
start = {str(r["depth"]): r["loss"] for r in start["depths"]} if "depths" in start else {}
said = open(os.path.join(scratch, "retrofit.log")).read().strip()
pre, cont, rf = runs["pretrain"], runs["continue"], runs["retrofit"]
depths = sorted(rf["final_val"], key=int)
tokens = rf["tokens_seen"]
gflop = lambda r: r["flops_per_token"] * r["tokens_seen"] / 1e9
lines = [
    f"# Retrofitted recurrence at the tiny scale (`scripts/bench-retrofit.sh {pretrain} {steps}`)",
    "",
    f"A 6-layer `gpt` (configs/gpt-tiny.toml, n_layers = 6: d 128, 4 query / 2 key-value heads, I 512, tied head)",
    f"pretrained for {pretrain} steps of 8 × 64 tokens on the default corpus (AdamW, cosine), then two arms",
    f"from its final checkpoint, each {steps} steps of the same batches ({tokens:,} tokens), Muon (lr 0.01,",
    "AdamW 1e-3 on embeddings, head and norms), warmup-stable-decay, one process, 2 threads, CPU, fp32:",
    "",
    "- **(a) continue**: the GPT trained on as it is;",
    f"- **(b) retrofit**: `muninn retrofit` ({said.split('(', 1)[1].rstrip(')')}), random adapter,",
    "  configs/retrofit-tiny.toml: 1-sqrt curriculum to r̄ = 8 over 75 % of the steps, k = 4 capped at r̄.",
    "",
    "Validation: the first 256 held-out rows (16,384 tokens); Huginn depths from a random initial state",
    "seeded as in training.",
    "",
    "| model | val loss | training wall time | training FLOPs (`muninn compare`'s estimate, at the run's r̄ and k) |",
    "|---|---|---|---|",
    f"| pretrained GPT (start of both arms) | {pre['final_loss']:.4f} | {secs('pretrain')} s ({pretrain} steps) | {gflop(pre):.0f} GFLOP |",
    f"| (a) continue | {cont['final_loss']:.4f} | {secs('continue')} s | {gflop(cont):.0f} GFLOP |",
    f"| (b) retrofit, r = 8 (trained mean) | {rf['final_val'].get('8', float('nan')):.4f} | {secs('retrofit-train')} s | {gflop(rf):.0f} GFLOP |",
    "",
    "(b) by test-time depth r:",
    "",
    "| r | " + " | ".join(depths) + " |",
    "|---|" + "---|" * len(depths),
]
if start:
    lines.append("| retrofitted, before training | " + " | ".join(f"{start[r]:.4f}" for r in depths) + " |")
lines += [
    "| after training | " + " | ".join(f"{rf['final_val'][r]:.4f}" for r in depths) + " |",
    "",
    "```",
    "\n".join(l for l in open(os.path.join(scratch, "compare.txt")).read().splitlines() if not l.startswith("wrote ")).rstrip(),
    "```",
    "",
    f"![validation loss by test-time depth: (b) against (a) and the start]({png})",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
