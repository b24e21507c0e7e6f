#!/usr/bin/env bash
# Benchmark (not a test): tokens/s of `muninn data prepare` on the default corpus with 1 and 2
# threads, and the loader's rows/s; then streaming preparation of corpora larger than its buffer
# (the default corpus repeated: SIZES_MB, default 500 and 2000 MB of text, as .jsonl.zst, and the
# smaller as Parquet), with tokens/s per thread and peak RSS, which must stay flat as the corpus
# grows. Writes bench/data.md. Needs scripts/quickstart.sh to have run. About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/muninn
tok=.cache/datasets/shakespeare/tokenizer.json
[ -x "$bin" ] && [ -f "$tok" ] || { echo "run scripts/quickstart.sh first" >&2; exit 1; }
cargo build --release --quiet -p muninn-data --example make_corpus
BUFFER_MB=${BUFFER_MB:-64}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p bench
{
  echo "# Data pipeline benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc --all) cores, \`$bin\` (release), default corpus (5.06 MB), tokenizer 4096 ids, block size 256."
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
  rm -rf "$tmp"/t1 "$tmp"/t2
  echo
  echo "Streaming preparation, \`--buffer-mb $BUFFER_MB --threads 2 --block-size 1024\`: the default corpus's paragraphs"
  echo "repeated to each size (\`data/examples/make_corpus.rs\`); peak RSS of the whole process (\`/usr/bin/time\`)."
  echo
  echo '| input | text MB | file MB | documents | tokens | seconds | tokens/s per thread | peak RSS MB |'
  echo '|---|---|---|---|---|---|---|---|'
  set -- ${SIZES_MB:-500 2000}
  smallest=$1
  for mb in "$@"; do
    for fmt in jsonl.zst parquet; do
      [ "$fmt" = parquet ] && [ "$mb" != "$smallest" ] && continue
      f="$tmp/corpus-$mb.$fmt"
      target/release/examples/make_corpus .cache/corpus/shakespeare "$mb" "$f"
      /usr/bin/time -f '%M %e' -o "$tmp/time" $bin data prepare --tokenizer "$tok" --input "$f" \
        --block-size 1024 --threads 2 --buffer-mb "$BUFFER_MB" --out "$tmp/ds" > "$tmp/out"
      read -r rss secs < "$tmp/time"
      docs=$(sed -n 's/.*: \([0-9]*\) documents, \([0-9]*\) tokens.*/\1/p' "$tmp/out")
      toks=$(sed -n 's/.*: \([0-9]*\) documents, \([0-9]*\) tokens.*/\2/p' "$tmp/out")
      fmb=$(( $(stat -c %s "$f") / 1000000 ))
      echo "| .$fmt | $mb | $fmb | $docs | $toks | $secs | $(python3 -c "print(f'{$toks / $secs / 2:,.0f}')") | $(( rss / 1024 )) |"
      rm -rf "$f" "$tmp/ds"
    done
  done
} > bench/data.md
cat bench/data.md
