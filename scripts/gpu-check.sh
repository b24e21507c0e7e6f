#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU and PyTorch 2.11 (its libtorch is used; nothing is
# built there). Build here first, then carry target/release/muninn and
# target/release/examples/gpu_check with the working tree:
#
#   scripts/gpu-check.sh --build     # here: the release binary and the check binary
#   scripts/gpu-check.sh             # there: under 5 minutes; writes bench/gpu.md
#
# It checks the GPU forward against the CPU on the micro shape (fp32 logits within 1e-4, the
# bf16-mixed loss within 1 %), trains a ~1 B-parameter Huginn shape for 20 steps in bf16-mixed with
# activation checkpointing (tokens/s, MFU against the GPU's bf16 peak, peak device memory from
# libtorch's caching allocator), and compares device memory at r = 4 and r = 32 with k = 4.
# PYTHON names the Python whose torch to use (default python3); PEAK_FLOPS overrides the bf16 peak.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --build ]; then
  cargo build --release --quiet
  cargo build --release --quiet -p muninn-model --example gpu_check
  ls -l target/release/muninn target/release/examples/gpu_check
  exit 0
fi
py=${PYTHON:-python3}
torch_lib=$($py -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
torch_version=$($py -c 'import torch; print(torch.__version__)')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=target/release/muninn check=target/release/examples/gpu_check
for b in $bin $check; do
  [ -x "$b" ] || { echo "gpu-check: $b missing: run scripts/gpu-check.sh --build where cargo is" >&2; exit 1; }
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
gpu=${gpu:-unknown GPU}
# Dense bf16 peak FLOP/s of one device, for MFU.
case "$gpu" in
  *H200* | *H100*) peak=989e12 ;;
  *A100*) peak=312e12 ;;
  *MI250X*) peak=191.5e12 ;;
  *MI300X*) peak=1307e12 ;;
  *) peak=0 ;;
esac
peak=${PEAK_FLOPS:-$peak}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "gpu-check: $gpu, torch $torch_version ($torch_lib)"
parity=$(GPU_NAME="$gpu" $check) || { echo "gpu-check: parity failed: $parity" >&2; exit 1; }
echo "parity: $parity"

g=tests/fixtures/gsm8k/test.jsonl
$bin data tokenizer --input $g --vocab-size 512 --text-field question --out "$tmp/tok.json" >/dev/null
$bin data prepare --tokenizer "$tmp/tok.json" --input $g --text-field question --block-size 1024 \
  --val-fraction 0.05 --out "$tmp/ds" >/dev/null

# ~1.0 B parameters: d 2560, 20 heads, I 10240, V 65536, 2/4/2 blocks.
model='[model]
preset = "nebel-raven-3.5b"
name = "huginn-1b-check"
n_embd = 2560
n_heads = 20
intermediate_size = 10240
block_size = 1024'
config() { # name r k steps log_interval
  cat > "$tmp/$1.toml" <<TOML
[run]
name = "$1"
dir = "$tmp/runs"
$model
[data]
dir = "$tmp/ds"
tokenizer = "$tmp/tok.json"
[recurrence]
scheme = "fixed"
mean_recurrence = $2
mean_backprop_depth = $3
activation_checkpointing = true
[optimizer]
kind = "adamw"
lr = 1e-4
schedule = "constant"
warmup_steps = 0
[train]
seed = 1
max_steps = $4
micro_batch_size = 4
precision = "bf16-mixed"
device = "cuda"
[checkpoint]
interval = 0
[log]
interval = $5
peak_flops = $peak
tensorboard = false
[eval]
interval = 0
depths = [1]
max_rows = 4
TOML
  echo "$tmp/$1.toml"
}
field() { $py -c 'import json, sys; r = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2])]; print(r.get(sys.argv[3]))' "$tmp/runs/$1/metrics.jsonl" "$2" "$3"; }

printf '%s\nmean_recurrence = 8\nmean_backprop_depth = 4\n' "$model" > "$tmp/shape.toml"
info=$($bin model info "$tmp/shape.toml" --n 4 --k 4 | sed -n 's/.*total (tied) *//p')
$bin train "$(config speed 8 4 20 10)" > "$tmp/speed.log" 2>&1 || { tail -20 "$tmp/speed.log" >&2; exit 1; }
tps=$(field speed 1 tokens_per_s) mfu=$(field speed 1 mfu) mem=$(field speed 1 gpu_peak_allocated_gib)
res=$(field speed 1 gpu_peak_reserved_gib)
for r in 4 32; do
  $bin train "$(config mem$r $r 4 3 3)" > "$tmp/mem$r.log" 2>&1 || { tail -20 "$tmp/mem$r.log" >&2; exit 1; }
done
m4=$(field mem4 0 gpu_peak_allocated_gib) m32=$(field mem32 0 gpu_peak_allocated_gib)

out=bench/gpu.md
{
  echo "# GPU check"
  echo
  echo "Written by \`scripts/gpu-check.sh\` on $(date -u +%Y-%m-%d): $gpu, libtorch from torch $torch_version,"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), binaries built on the project machine."
  echo
  echo "Parity (micro shape, 2 × 32 tokens, depth 4, zero s0): \`$parity\`"
  echo
  echo "| ~1 B Huginn ($info parameters), bf16-mixed, per-iteration checkpointing, (n, k) = (4, 4), 4 × 1024 tokens | value |"
  echo "|---|---|"
  echo "| tokens/s (steps 11-20) | $tps |"
  echo "| MFU against $peak bf16 FLOP/s | $mfu |"
  echo "| peak allocated / reserved device memory, GiB | $mem / $res |"
  echo "| peak allocated at r = 4 vs r = 32 (k = 4, 3 steps), GiB | $m4 vs $m32 |"
} > "$out"
cat "$out"
