#!/usr/bin/env bash
# The main job on the embedded `tiny` shape: set up, then inspect the model, initialise a checkpoint,
# run a forward pass at several depths, and export it in Huginn's Hugging Face layout.
# Outputs go to runs/quickstart/; existing outputs are reused, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=target/release/muninn
out=runs/quickstart
mkdir -p "$out"

$bin model info nebel-raven-3.5b
$bin model info tiny
[ -d "$out/init" ] || $bin init tiny --seed 233 --out "$out/init"
for depth in 1 4 16; do
  $bin forward "$out/init" --tokens 1,2,3,4,5,6,7,8 --depth "$depth" --init-state zero \
    --out "$out/forward-r$depth.safetensors"
done
[ -d "$out/hf" ] || $bin export "$out/init" --format huginn-hf --out "$out/hf"
echo "quickstart: done; outputs in $out/"
