#!/usr/bin/env bash
# TiDAR on the default corpus: a TiDAR GPT (configs/tidar-tiny.toml) and its AR twin (the same shape,
# seed, batches, steps and recipe, next-token objective), then decoding on fixed prompts, for each
# vocabulary in VOCABS: 4096 is the default corpus's BPE tokenizer (.cache/datasets/shakespeare), any
# other size a byte-level BPE of that size trained here on the same corpus (289 = the 256 bytes and
# one merge, about the shared doc's character vocabulary). Writes bench/tidar.md and bench/tidar.png
# (the first vocabulary's TiDAR run: its AR and diffusion training losses); OUT=FILE.md writes FILE.md
# and FILE.png instead.
#
#   scripts/bench-tidar.sh [STEPS=1600] [BATCH=16] [NEW=96] [VOCABS="4096 289"]
# Extra settings for both models: SET="model.n_embd=256 model.intermediate_size=1024 optimizer.lr=1e-3"
# Needs the default corpus and its tokenizer and 64-token shards (scripts/quickstart.sh makes them).
# About 16 minutes on 2 cores at the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1600}
BATCH=${2:-16}
NEW=${3:-96}
VOCABS=${4:-4096 289}
BIN=${MUNINN_BIN:-target/release/muninn}
OUT=${OUT:-bench/tidar.md}
PNG=${OUT%.md}.png
[ -x "$BIN" ] || cargo build --release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
data=.cache/datasets/shakespeare
[ -f "$data/tokenizer.json" ] && [ -d "$data/b64" ] ||
  { echo "bench-tidar: $data/{tokenizer.json,b64} missing: run scripts/quickstart.sh first" >&2; exit 1; }

prompts=("ROMEO:" "First Citizen:" "KING HENRY:" "To be, or not to be" "O, what a noble mind"
  "Now is the winter of our discontent" "Friends, Romans, countrymen," "JULIET:")
gen() { # checkpoint, then generate's options: one JSON line per prompt
  local ckpt=$1; shift
  for p in "${prompts[@]}"; do
    OMP_NUM_THREADS=1 "$BIN" generate "$ckpt" --prompt "$p" --max-tokens "$NEW" --threads 1 --json "$@"
  done
}

for v in $VOCABS; do
  dir="$scratch/v$v"
  mkdir -p "$dir"
  if [ "$v" = 4096 ]; then
    tok=$data/tokenizer.json shards=$data/b64
  else
    tok=$dir/tokenizer.json shards=$dir/b64
    "$BIN" data tokenizer --input .cache/corpus/shakespeare --vocab-size "$v" --out "$tok" >/dev/null
    "$BIN" data prepare --tokenizer "$tok" --input .cache/corpus/shakespeare --block-size 64 \
      --out "$shards" >/dev/null
  fi
  mask=$(python3 -c 'import json, sys
print(next(t["id"] for t in json.load(open(sys.argv[1]))["added_tokens"] if t["content"] == "<|reserved_0|>"))' "$tok")
  common=(--set run.dir="$dir" --set train.max_steps="$STEPS" --set train.micro_batch_size="$BATCH"
    --set eval.interval=0 --set eval.max_rows=512 --set checkpoint.interval=0 --set log.interval=20
    --set log.tensorboard=false --set optimizer.warmup_steps=40 --set data.dir="$shards"
    --set data.tokenizer="$tok" --set model.vocab_size="$v")
  for s in ${SET:-}; do common+=(--set "$s"); done
  "$BIN" train configs/tidar-tiny.toml "${common[@]}" --set objective.mask_id="$mask" >"$dir/tidar.log" 2>&1
  "$BIN" train configs/gpt-tiny.toml "${common[@]}" --set run.name=ar-twin --set model.block_size=256 \
    >"$dir/ar.log" 2>&1
  tidar=$(ls -d "$dir"/tidar-tiny/checkpoints/step-* | tail -n 1)
  "$BIN" curve "$dir/tidar-tiny" --metrics ar_loss,diff_loss --out "$scratch/tidar-v$v.png" >/dev/null
  gen "$tidar" >"$dir/plain.jsonl"
  for k in 4 8; do
    for b in 0 0.5 1; do
      gen "$tidar" --tidar --draft "$k" --beta "$b" >"$dir/tidar-k$k-b$b.jsonl"
    done
  done
done
first=${VOCABS%% *}
cp "$scratch/tidar-v$first.png" "$PNG"

python3 - "$scratch" "$STEPS" "$BATCH" "$NEW" "$OUT" "$(basename "$PNG")" "${SET:-}" $VOCABS <<'PY'
import json, sys, os, tomllib
scratch, steps, batch, new, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
png, sets, vocabs = sys.argv[6], sys.argv[7], sys.argv[8:]
def metrics(d, name):
    rows = [json.loads(l) for l in open(os.path.join(d, name, "metrics.jsonl"))]
    last, first = rows[-1], rows[0]
    per_step = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return last, per_step
run = tomllib.load(open(os.path.join(scratch, f"v{vocabs[0]}", "tidar-tiny", "config.toml"), "rb"))
m, obj, opt = run["model"], run["objective"], run["optimizer"]
shape = (f"GPT d {m['n_embd']}, {m['n_layers']} layers, {m['n_heads']} query / {m['n_kv_heads']} key-value heads, "
         f"I {m['intermediate_size']}; AdamW lr {opt['lr']:g} → {opt['min_lr']:g} {opt['schedule']}")
prefix = f"SET=\"{sets}\" " if sets else ""
lines = [
    f"# TiDAR on the default corpus (`{prefix}scripts/bench-tidar.sh {steps} {batch} {new} \"{' '.join(vocabs)}\"`)",
    "",
    f"`configs/tidar-tiny.toml` ({shape}, 64-token rows, b = {obj['block']}, α = {obj['alpha']}, mask = `<|reserved_0|>`) and its",
    f"AR twin (`configs/gpt-tiny.toml`, same shape, seed, batches and recipe), {steps} steps of batch {batch} each, one",
    "process, CPU, fp32, on the default corpus (Shakespeare), tokenized by "
    + " and by ".join("its 4096-id BPE" if v == "4096" else
                      f"a {v}-id byte-level BPE trained on it" + (" (the 256 bytes, one merge and the specials: the shared doc's character-level setup)" if v == "289" else "")
                      for v in vocabs) + ".",
    "Validation: 512 held-out rows, AR loss under the plain causal mask. Decoding the TiDAR model: 8 fixed",
    f"prompts, {new} new tokens each, one thread, batch 1, greedy; \"accepted\" counts the tokens a decode",
    "forward commits (1 to k).",
]
for v in vocabs:
    d = os.path.join(scratch, f"v{v}")
    t, t_step = metrics(d, "tidar-tiny")
    a, a_step = metrics(d, "ar-twin")
    jl = lambda f: [json.loads(l) for l in open(os.path.join(d, f))]
    plain = jl("plain.jsonl")
    plain_tps = sum(r["tokens_per_s"] for r in plain) / len(plain)
    unit = "nats/token" if v == "4096" else "nats/byte"
    lines += [
        "",
        f"## Vocabulary {v}" + (" (the default BPE)" if v == "4096" else " (byte-level)"),
        "",
        "| | AR twin | TiDAR |",
        "|---|---|---|",
        f"| held-out AR loss ({unit}) | {a['val_loss']:.4f} | {t['val_loss']:.4f} ({100 * (t['val_loss'] / a['val_loss'] - 1):+.1f} %) |",
        f"| held-out diffusion loss | – | {t['val_diff_loss']:.4f} |",
        f"| time per training step | {a_step:.3f} s | {t_step:.3f} s ({t_step / a_step:.2f}×) |",
        "",
        f"Plain KV-cached greedy AR of the TiDAR checkpoint: {plain_tps:.0f} tokens/s.",
        "",
        "| draft k | β | accepted tokens per decode forward | tokens per forward (prefill included) | tokens/s | vs plain AR | equal to greedy AR |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in (4, 8):
        for b in ("0", "0.5", "1"):
            rs = jl(f"tidar-k{k}-b{b}.jsonl")
            acc = sum(r["mean_accepted"] for r in rs) / len(rs)
            tpf = sum(r["tokens_per_forward"] for r in rs) / len(rs)
            tps = sum(r["tokens_per_s"] for r in rs) / len(rs)
            same = sum(r["tokens"] == p["tokens"] for r, p in zip(rs, plain))
            lines.append(f"| {k} | {b} | {acc:.2f} | {tpf:.2f} | {tps:.0f} | {tps / plain_tps:.2f}× | {same} of {len(rs)} |")
lines += ["", f"![TiDAR training losses, vocabulary {vocabs[0]}]({png})", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
