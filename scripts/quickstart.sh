#!/usr/bin/env bash
# The main job on the embedded `tiny` shape and the default corpus: set up; fetch the corpus and
# prepare a tokenizer and shards from it (once; reused afterwards); inspect the model, initialise a
# checkpoint, run a forward pass on real text at several depths, and export it in Huginn's Hugging
# Face layout. Outputs go to .cache/datasets/ and runs/quickstart/; existing outputs are reused,
# never overwritten.
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
# tiny with the corpus tokenizer's 4096 ids.
printf '[model]\npreset = "tiny"\nvocab_size = 4096\n' > "$out/tiny-4096.toml"
[ -d "$out/init" ] || $bin init "$out/tiny-4096.toml" --seed 233 --out "$out/init"
for depth in 1 4 16; do
  $bin forward "$out/init" --tokenizer "$data/tokenizer.json" --text "To be, or not to be, that is the question" \
    --depth "$depth" --init-state zero \
    --out "$out/forward-r$depth.safetensors"
done
[ -d "$out/hf" ] || $bin export "$out/init" --format huginn-hf --out "$out/hf"
echo "quickstart: done; outputs in $out/"
