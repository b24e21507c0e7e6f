#!/usr/bin/env bash
# Benchmark (not a test): the training step against the reference PyTorch step, on this machine, in
# one run. For each shape and thread count, `muninn train` and the reference modeling file
# (raven_modeling_minimal.py, eager PyTorch 2.11 from .venv, scripts/bench/ref_step.py) take the same
# shape, fixed (n, k), batch, fp32, AdamW with clipping and no activation checkpointing; then the
# step's FLOP/s against a large fp32 matmul's, backward time against parameter count at a fixed
# number of tensors, and peak memory at r = 4, 16, 64 with k = 4 and activation checkpointing.
# Writes bench/step.md. About 15 minutes on 2 cores. STEPS=N changes the timed steps per arm, ROUNDS=N
# how often the two arms alternate (3);
# PROFILE=true adds Muninn's per-phase times; MUNINN_BIN=PATH times another build of muninn (e.g.
# an older commit's, for a before/after comparison; it then also needs PROFILE unset) and OUT=FILE
# writes elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps-only
cargo build --release --quiet
cargo build --release --quiet -p muninn-model --example step_parts
bin=target/release/muninn py=.venv/bin/python parts=target/release/examples/step_parts
train_bin=${MUNINN_BIN:-$bin}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1
g=tests/fixtures/gsm8k/test.jsonl
$bin data tokenizer --input $g --text-field question --vocab-size 512 --out "$tmp/tok.json" >/dev/null
$bin data prepare --tokenizer "$tmp/tok.json" --input $g --text-field question --block-size 64 \
  --out "$tmp/ds" >/dev/null

# name | [model] keys | n | k | micro-batch | timed steps
shapes=(
  "tiny|preset = \"tiny\"\nvocab_size = 4096|2|2|8|${STEPS:-20}"
  "d512|preset = \"tiny\"\nn_embd = 512\nn_heads = 8\nintermediate_size = 2048\nvocab_size = 4096\nn_layers_in_prelude = 2\nn_layers_in_recurrent_block = 4\nn_layers_in_coda = 2|4|4|4|${STEPS:-6}"
)

# Muninn: every step logged (a step's time excludes the logging after it); the median step time
# after $steps warm-up steps, as the reference's.
muninn_step() { # name model n k batch steps threads -> "ms_per_step flops_per_token time_*_ms..."
  local name=$1 model=$2 n=$3 k=$4 b=$5 steps=$6 threads=$7 cfg="$tmp/$1-$7.toml"
  rm -rf "$tmp/runs/$name-$threads" # the previous round's finished run
  printf '[run]\nname = "%s"\ndir = "%s/runs"\n[model]\n%b\n[data]\ndir = "%s/ds"\ntokenizer = "%s/tok.json"\n' \
    "$name-$threads" "$tmp" "$model" "$tmp" "$tmp" > "$cfg"
  cat >> "$cfg" <<TOML
[recurrence]
scheme = "fixed"
mean_recurrence = $((n + k))
mean_backprop_depth = $k
activation_checkpointing = false
[optimizer]
kind = "adamw"
lr = 1e-4
schedule = "constant"
warmup_steps = 0
weight_decay = 0.1
grad_clip = 1.0
[train]
seed = 1
max_steps = $((2 * steps))
micro_batch_size = $b
threads = $threads
[checkpoint]
interval = 0
[log]
interval = 1
tensorboard = false
${PROFILE:+profile = $PROFILE}
[eval]
interval = 0
depths = [1]
max_rows = 4
TOML
  "$train_bin" train "$cfg" >/dev/null 2>&1
  $py - "$tmp/runs/$name-$threads/metrics.jsonl" "$b" "$steps" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[3]):]
med = lambda k: statistics.median(r.get(k, float("nan")) for r in rows)
ms = statistics.median(int(sys.argv[2]) * 64 / r["tokens_per_s"] * 1e3 for r in rows)
t = " ".join(f"{med(k):.1f}" for k in ["time_data_ms", "time_fwd_bwd_ms", "time_reduce_ms", "time_optimizer_ms"])
print(f'{ms:.1f} {rows[0]["flops_per_token"]:.6g} {t}')
PY
}

ref_step() { # name model n k batch steps threads -> ms_per_step
  local name=$1 model=$2 n=$3 k=$4 b=$5 steps=$6 threads=$7
  if [ ! -d "$tmp/hf-$name" ]; then
    printf '[model]\n%b\nmean_recurrence = %d\nmean_backprop_depth = %d\n' "$model" $((n + k)) "$k" > "$tmp/$name-shape.toml"
    $bin init "$tmp/$name-shape.toml" --out "$tmp/ck-$name" >/dev/null
    $bin export "$tmp/ck-$name" --format huginn-hf --out "$tmp/hf-$name" >/dev/null
  fi
  HF_HUB_OFFLINE=1 HF_MODULES_CACHE="$tmp/hf_modules" $py scripts/bench/ref_step.py "$tmp/hf-$name" \
    --n "$n" --k "$k" --batch "$b" --seq 64 --threads "$threads" --steps "$steps" --warmup "$steps" 2>/dev/null |
    $py -c 'import json, sys; print("%.1f" % json.load(sys.stdin)["ms_per_step"])'
}

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
out=${OUT:-bench/step.md}
{
  echo "# Training step: Muninn vs the reference PyTorch step"
  echo
  echo "Written by \`scripts/bench-step.sh\` on $(date -u +%Y-%m-%d), $(nproc --all) cores ($cpu), libtorch $($py -c 'import torch; print(torch.__version__)'),"
  echo "commit $(git rev-parse --short HEAD)${MUNINN_BIN:+ (Muninn arms: $MUNINN_BIN)}. Same shape, fixed (n, k), micro-batch × 64 tokens, fp32, AdamW + clipping,"
  echo "no activation checkpointing. Reference: \`raven_modeling_minimal.py\` in eager PyTorch (forward, backward,"
  echo "\`clip_grad_norm_\`, \`torch.optim.AdamW\`); Muninn: \`muninn train\`. Each arm: the median step after as many warm-up steps;"
  echo "the two arms alternate ${ROUNDS:-3} times (rounds: reference / Muninn of each) and the table holds each arm's median."
  echo "FLOP/s use Muninn's model FLOP count (the same model for both), against a 2048² fp32 matmul at the same threads."
  echo
  echo "| shape | params | (n, k) | batch × T | threads | reference ms/step | Muninn ms/step | Muninn tokens/s | Muninn vs reference | each round | Muninn FLOP/s / matmul | reference FLOP/s / matmul |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$out.tmp"
profile_rows=()
for s in "${shapes[@]}"; do
  IFS='|' read -r name model n k b steps <<< "$s"
  params=$(printf '[model]\n%b\n' "$model" > "$tmp/p.toml"; $bin model info "$tmp/p.toml" | sed -n "s/.*total (tied) *\([0-9,]*\).*/\1/p" | head -1)
  for threads in 1 2; do
    mm=$($py scripts/bench/matmul.py "$threads")
    # The arms alternate, $ROUNDS times: a slow minute of the VM then falls on both, not on one.
    refs=() mus=()
    for round in $(seq "${ROUNDS:-3}"); do
      refs+=("$(ref_step "$name" "$model" "$n" "$k" "$b" "$steps" "$threads")")
      read -r ms fpt t_data t_fb t_red t_opt <<< "$(muninn_step "$name" "$model" "$n" "$k" "$b" "$steps" "$threads")"
      mus+=("$ms")
    done
    $py - "$name" "$params" "$n" "$k" "$b" "$threads" "${refs[*]}" "${mus[*]}" "$fpt" "$mm" >> "$out.tmp" <<'PY'
import statistics, sys
name, params, n, k, b, threads, refs, mus, fpt, mm = sys.argv[1:]
refs, mus = [float(x) for x in refs.split()], [float(x) for x in mus.split()]
b, fpt, mm = int(b), float(fpt), float(mm)
ref, ms = statistics.median(refs), statistics.median(mus)
tok = b * 64
f = lambda step_ms: fpt * tok / (step_ms / 1e3) / mm
rounds = ", ".join(f"{r / m:.2f}" for r, m in zip(refs, mus))
print(f"| {name} | {params} | ({n}, {k}) | {b} × 64 | {threads} | {ref:.0f} | {ms:.0f} | {tok / ms * 1e3:.0f} | **{ref / ms:.2f}×** | {rounds} | {f(ms):.2f} | {f(ref):.2f} |")
PY
    profile_rows+=("| $name | $threads | $t_data | $t_fb | $t_red | $t_opt |")
  done
done
{
  if [ "${PROFILE:-false}" = true ]; then
    echo
    echo "Muninn's step by phase (\`log.profile = true\`), ms per step:"
    echo
    echo "| shape | threads | data | forward + backward | reduce + vote | optimizer |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${profile_rows[@]}"
  fi
  echo
  echo "Backward time against parameter count at a fixed number of tensors (1/2/1 blocks, widths 256-1024,"
  echo "4 × 64 tokens, (n, k) = (0, 2), 1 thread; \`model/examples/step_parts.rs\`): it must grow linearly."
  echo
  echo "| n_embd | parameters | tensors | forward ms | backward ms | backward ns / parameter |"
  echo "|---|---|---|---|---|---|"
  $parts backward 1 | $py -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("| %d | {:,} | %d | %.0f | %.0f | %.1f |".format(r["params"]) % (r["n_embd"], r["tensors"], r["forward_ms"], r["backward_ms"], r["backward_ms"] * 1e6 / r["params"]))'
  echo
  echo "Peak memory of one micro-step (d512 shape, 4 × 64 tokens, k = 4, activation checkpointing, 1 thread;"
  echo "libtorch's CPU allocations counted by the shim, weights and the gradient buffer excluded): it must stay flat."
  echo
  echo "| r | peak MB | vs r = 4 |"
  echo "|---|---|---|"
  $parts memory 1 | $py -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
for r in rows:
    print("| %d | %.1f | %.3f× |" % (r["r"], r["peak_bytes"] / 1e6, r["peak_bytes"] / rows[0]["peak_bytes"]))'
} >> "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
