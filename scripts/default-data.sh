#!/usr/bin/env bash
# The default corpus, ready to train on: fetch it (scripts/fetch-corpus.sh), train a 4096-id tokenizer
# on it and cut it into shards of 64-token rows (the tiny shapes' block size), in
# .cache/datasets/shakespeare/{tokenizer.json,b64}. Each step runs once; later calls reuse its output.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MUNINN_BIN:-target/release/muninn}
scripts/fetch-corpus.sh
data=.cache/datasets/shakespeare
mkdir -p "$data"
[ -f "$data/tokenizer.json" ] || $bin data tokenizer --input .cache/corpus/shakespeare --vocab-size 4096 \
  --out "$data/tokenizer.json"
[ -d "$data/b64" ] || $bin data prepare --tokenizer "$data/tokenizer.json" --input .cache/corpus/shakespeare \
  --block-size 64 --out "$data/b64"
$bin data verify "$data/b64" --tokenizer "$data/tokenizer.json"
