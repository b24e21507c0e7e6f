#!/usr/bin/env bash
# TRM training steps/s: Muninn (`muninn train configs/trm-sudoku6.toml`, no validation) beside the
# reference code (scripts/bench_trm_reference.py: its model, loss head and sign-SGD; AdamATan2 in
# torch) on the same config, batch and thread count, same machine, same run, alternating arms.
# Writes bench/trm.md.
#
#   scripts/bench-trm.sh [STEPS=110] [ROUNDS=2] [THREADS=2]
# The reference's model files are the vendored ones (tests/reference/trm; REF=path for another
# checkout); .venv has what they import (pydantic, einops: scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-110}
ROUNDS=${2:-2}
THREADS=${3:-2}
REF=${REF:-tests/reference/trm}
BIN=target/release/muninn
PY=.venv/bin/python
DATA=.cache/datasets/sudoku6
[ -x "$BIN" ] || cargo build --release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The config's dataset (generated on first use).
"$BIN" train configs/trm-sudoku6.toml --set run.dir="$scratch/gen" --set train.max_steps=1 \
  --set eval.max_rows=1 >/dev/null 2>&1
muninn_arm() {
  local dir="$scratch/m$1"
  OMP_NUM_THREADS=$THREADS "$BIN" train configs/trm-sudoku6.toml --set run.dir="$dir" \
    --set train.max_steps="$STEPS" --set train.threads="$THREADS" --set eval.interval=0 \
    --set eval.max_rows=1 --set log.interval=10 --set checkpoint.interval=0 >/dev/null 2>&1
  # Mean steps/s over the log windows after the first (startup and the first steps left out).
  python3 - "$dir/trm-sudoku6/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["tokens_per_s"] / (32 * 36) for r in rows[1:] if r["step"] % 10 == 0]
print(f"{sum(rates) / len(rates):.4f}")
PY
}
reference_arm() {
  OMP_NUM_THREADS=$THREADS "$PY" scripts/bench_trm_reference.py \
    --repo "$REF" --data "$DATA" --steps "$STEPS" --threads "$THREADS" | awk '{print $2}'
}
rows=""
for r in $(seq 1 "$ROUNDS"); do
  ref=$(reference_arm)
  mun=$(muninn_arm "$r")
  ratio=$(python3 -c "print(f'{$mun / $ref:.2f}')")
  echo "round $r: reference $ref steps/s, muninn $mun steps/s, ${ratio}x"
  rows+="| $r | $ref | $mun | ${ratio}× |"$'\n'
done
mkdir -p bench
{
  echo "# TRM training speed (configs/trm-sudoku6.toml)"
  echo
  echo "\`scripts/bench-trm.sh $STEPS $ROUNDS $THREADS\` on $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(date -u +%F)."
  echo "MLP-t D 64, 6×6 sudoku, batch 32, T 2, n 2, fp32, $THREADS libtorch threads each; steps/s after the first 10 steps;"
  echo "the reference is its own model, loss head and sign-SGD (AdamATan2 written in torch), one supervision step per optimizer step."
  echo
  echo "| round | reference steps/s | Muninn steps/s | Muninn / reference |"
  echo "|---|---|---|---|"
  printf "%s" "$rows"
} > bench/trm.md
cat bench/trm.md
