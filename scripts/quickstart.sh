#!/usr/bin/env bash
# The main job: set up; fetch the default corpus and prepare a tokenizer and shards from it (once;
# reused afterwards); inspect the model shapes; train the tiny shape at mean depth 8 for about 8
# minutes (configs/demo.toml); measure validation loss at test-time depths 1..64 and plot it; sample
# with per-token adaptive exit; draw how the latent state converges; run a forward pass; export the
# model in Huginn's Hugging Face layout. Outputs go to .cache/datasets/, runs/demo/ and
# runs/quickstart/; existing datasets and checkpoints are reused, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=target/release/muninn
out=runs/quickstart
mkdir -p "$out"

# Default corpus → tokenizer (4096 ids) → shards of 64-token rows (the tiny shape's block size).
scripts/default-data.sh
data=.cache/datasets/shakespeare

$bin model info nebel-raven-3.5b
$bin model info tiny
# Train the tiny shape on it (configs/demo.toml); a rerun finds the finished run.
$bin train configs/demo.toml --resume auto
ckpt=$(ls -d runs/demo/checkpoints/step-* | tail -n 1)
# Test-time scaling: validation loss at each depth (a table, eval.json and eval.png).
$bin eval "$ckpt" --depths 1,2,4,8,16,32,64 --out "$out/eval"
# Sampling behind the KV cache, each token stopping once its prediction settles.
$bin generate "$ckpt" --prompt "ROMEO:" --exit kl:1e-3 --depth 32 --max-tokens 40 --seed 1
# How each token's latent state converges over 16 iterations (heatmap and PCA trajectories).
$bin latents "$ckpt" --prompt "To be, or not to be, that is the question" --depth 16 --out "$out/latents"
$bin forward "$ckpt" --tokenizer "$data/tokenizer.json" --text "To be, or not to be, that is the question" \
  --depth 8 --init-state zero --out "$out/forward-r8.safetensors"
[ -d "$out/hf" ] || $bin export "$ckpt" --format huginn-hf --out "$out/hf"
echo "quickstart: done; outputs in $out/ (the depth plot: $out/eval/eval.png)"
