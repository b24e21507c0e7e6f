#!/usr/bin/env bash
# The main job: set up; fetch the default corpus and prepare a tokenizer and shards from it (once;
# reused afterwards); inspect the model shapes; train the tiny shape for a few minutes
# (configs/demo.toml); run the trained model on a line of Hamlet at several depths; export it in
# Huginn's Hugging Face layout. Outputs go to .cache/datasets/, runs/demo/ and runs/quickstart/;
# existing outputs are reused, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=target/release/muninn
out=runs/quickstart
mkdir -p "$out"

# Default corpus → tokenizer (4096 ids) → shards of 64-token rows (the tiny shape's block size).
scripts/fetch-corpus.sh
data=.cache/datasets/shakespeare
mkdir -p "$data"
[ -f "$data/tokenizer.json" ] || $bin data tokenizer --input .cache/corpus/shakespeare --vocab-size 4096 \
  --out "$data/tokenizer.json"
[ -d "$data/b64" ] || $bin data prepare --tokenizer "$data/tokenizer.json" --input .cache/corpus/shakespeare \
  --block-size 64 --out "$data/b64"
$bin data verify "$data/b64" --tokenizer "$data/tokenizer.json"

$bin model info nebel-raven-3.5b
$bin model info tiny
# Train the tiny shape on it for a few minutes (configs/demo.toml); a rerun finds the finished run.
$bin train configs/demo.toml --resume auto
ckpt=$(ls -d runs/demo/checkpoints/step-* | tail -n 1)
for depth in 1 4 16; do
  $bin forward "$ckpt" --tokenizer "$data/tokenizer.json" --text "To be, or not to be, that is the question" \
    --depth "$depth" --init-state zero --out "$out/forward-r$depth.safetensors"
done
[ -d "$out/hf" ] || $bin export "$ckpt" --format huginn-hf --out "$out/hf"
echo "quickstart: done; outputs in $out/"
