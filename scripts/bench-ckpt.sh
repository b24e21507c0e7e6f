#!/usr/bin/env bash
# Benchmark (not a test): checkpoint write and read throughput against this disk's own sequential
# write speed, measured in the same run (dd with fdatasync), for one writer and for 2 ranks writing
# their shards in parallel (ZeRO-1). A ~130 M-parameter Huginn shape (1.6 GB per checkpoint: fp32
# weights, m and v), one training step, then the save; the read is a resume. Writes bench/ckpt.md.
# About 5 minutes on 2 cores. SIZE_MB sets the dd file size (2048).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps-only
cargo build --release --quiet
bin=target/release/muninn
tmp=$(mktemp -d -p "${BENCH_DIR:-$PWD}" .bench-ckpt-XXXX); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
g=tests/fixtures/gsm8k/test.jsonl
$bin data tokenizer --input $g --text-field question --vocab-size 512 --out "$tmp/tok.json" >/dev/null
$bin data prepare --tokenizer "$tmp/tok.json" --input $g --text-field question --block-size 64 --out "$tmp/ds" >/dev/null
cat > "$tmp/cfg.toml" <<TOML
[run]
name = "ck"
dir = "$tmp/runs"
[model]
preset = "tiny"
n_embd = 1024
n_heads = 8
intermediate_size = 4096
vocab_size = 4096
n_layers_in_prelude = 2
n_layers_in_recurrent_block = 4
n_layers_in_coda = 2
[data]
dir = "$tmp/ds"
tokenizer = "$tmp/tok.json"
[recurrence]
scheme = "fixed"
mean_recurrence = 2
mean_backprop_depth = 1
[optimizer]
kind = "adamw"
lr = 1e-4
schedule = "constant"
warmup_steps = 0
[train]
max_steps = 1
micro_batch_size = 1
threads = 1
[checkpoint]
interval = 0
[log]
interval = 1
tensorboard = false
[eval]
interval = 0
depths = [1]
max_rows = 1
TOML
mb=${SIZE_MB:-2048}
dd_out=$(dd if=/dev/zero of="$tmp/dd" bs=1M count="$mb" conv=fdatasync 2>&1 | tail -1)
rm -f "$tmp/dd"
disk=$(python3 -c "
import re, sys
s = sys.argv[1]
n = float(re.search(r'(\d+) bytes', s).group(1)); t = float(re.search(r'([\d.]+) s,', s).group(1))
print(f'{n / t / 1e6:.0f}')" "$dd_out")

row() { # label, stderr of the save run, stderr of the resume run
  local save read
  save=$(grep -o 'saved .*' "$2" | head -1)
  read -r smb ssecs <<< "$(sed -n 's/.*(\([0-9.]*\) MB in \([0-9.]*\) s.*/\1 \2/p' <<< "$save")"
  rsecs=$(sed -n 's/.*read it in \([0-9.]*\) s.*/\1/p' "$3" | head -1)
  python3 -c "
smb, ssecs, rsecs, disk = $smb, $ssecs, $rsecs, $disk
print(f'| $1 | {smb:.0f} | {ssecs:.2f} | {smb / ssecs:.0f} | {smb / ssecs / disk:.0%} | {rsecs:.2f} | {smb / rsecs:.0f} |')"
}
$bin train "$tmp/cfg.toml" --set run.name=one 2> "$tmp/one.save" >/dev/null
$bin train "$tmp/cfg.toml" --set run.name=one --set train.max_steps=2 --resume auto 2> "$tmp/one.read" >/dev/null
mpirun -np 2 --oversubscribe $bin train "$tmp/cfg.toml" --set run.name=two --set dist.zero1=true \
  2> "$tmp/two.save" >/dev/null
mpirun -np 2 --oversubscribe $bin train "$tmp/cfg.toml" --set run.name=two --set dist.zero1=true \
  --set train.max_steps=2 --resume auto 2> "$tmp/two.read" >/dev/null
params=$($bin model info "$tmp/cfg.toml" | sed -n 's/.*total (tied) *\([0-9,]*\).*/\1/p')
{
  echo "# Checkpoint throughput"
  echo
  echo "Written by \`scripts/bench-ckpt.sh\` on $(date -u +%Y-%m-%d), $(nproc --all) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), commit $(git rev-parse --short HEAD)."
  echo "Huginn d1024, 2/4/2, V 4096: $params parameters; a checkpoint holds fp32 weights, m and v (and the"
  echo "tokenizer, config, state). The disk: \`dd bs=1M count=$mb conv=fdatasync\` = **$disk MB/s** in this run."
  echo "Save: from the start of the save to the rename (every rank writes its optimizer shard, rank 0 the"
  echo "weights and the manifest; everything fsynced). Read: rank 0's resume (weights and its shard ranges)."
  echo
  echo "| writers | MB | save s | save MB/s | of disk | read s | read MB/s |"
  echo "|---|---|---|---|---|---|---|"
  row "1 rank" "$tmp/one.save" "$tmp/one.read"
  row "2 ranks (ZeRO-1 shards)" "$tmp/two.save" "$tmp/two.read"
} > bench/ckpt.md
cat bench/ckpt.md
