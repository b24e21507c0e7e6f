#!/usr/bin/env bash
# Benchmark (not a test): tokens/s of `muninn data prepare` on the default corpus with 1 and 2
# threads, and the loader's rows/s. Writes bench/data.md. Needs scripts/quickstart.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/muninn
tok=.cache/datasets/shakespeare/tokenizer.json
[ -x "$bin" ] && [ -f "$tok" ] || { echo "run scripts/quickstart.sh first" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p bench
{
  echo "# Data pipeline benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, \`$bin\` (release), default corpus (5.06 MB), tokenizer 4096 ids, block size 256."
  echo
  echo '| command | figure |'
  echo '|---|---|'
  for t in 1 2; do
    line=$($bin data prepare --tokenizer "$tok" --input .cache/corpus/shakespeare --block-size 256 \
      --threads "$t" --out "$tmp/t$t" | grep 'tokens/s')
    echo "| \`muninn data prepare --threads $t\` | ${line} |"
  done
  cmp -s "$tmp/t1/train-00000.bin" "$tmp/t2/train-00000.bin" && echo "| outputs of 1 and 2 threads | byte-identical |"
  $bin data verify "$tmp/t1" --tokenizer "$tok" --micro-batch 8 | sed 's/^/| `muninn data verify` | /; s/$/ |/'
} > bench/data.md
cat bench/data.md
