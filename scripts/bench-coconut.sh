#!/usr/bin/env bash
# COCONUT's ProsQA demonstration: the arms No-CoT, CoT, Coconut and pause-as-thought (ARMS) of
# configs/coconut-prosqa.toml on the same generated graphs, model shape, seed and step budget, JOBS
# arms at a time (default 2, one thread each); then each final checkpoint answers the held-out generated graphs
# and the upstream ProsQA valid split. Writes bench/coconut.md and bench/coconut.png (the training
# loss of the Coconut arm); OUT=FILE.md writes FILE.md and FILE.png instead.
#
#   scripts/bench-coconut.sh [STEPS=10000] [BATCH=32] [ARMS="no-cot cot coconut pause-as-thought"]
# Extra settings for every arm: SET="model.preset=gpt-micro data.prosqa.graph.nodes=[10,14] ..."
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10000}
BATCH=${2:-32}
ARMS=${3:-no-cot cot coconut pause-as-thought}
BIN=${MUNINN_BIN:-target/release/muninn}
OUT=${OUT:-bench/coconut.md}
JOBS=${JOBS:-2}
PNG=${OUT%.md}.png
UPSTREAM=${UPSTREAM:-../shared/data/prosqa/prosqa_valid.json}
[ -x "$BIN" ] || cargo build --release
scratch=${SCRATCH:-$(mktemp -d)}
mkdir -p "$scratch"
sets=(--set run.dir="$scratch/runs" --set data.dir="$scratch/prosqa" --set train.max_steps="$STEPS"
  --set train.micro_batch_size="$BATCH" --set checkpoint.interval=0 --set eval.interval=1000)
for s in ${SET:-}; do sets+=(--set "$s"); done

# The data first, once, so the parallel arms find it made.
"$BIN" train configs/coconut-prosqa.toml "${sets[@]}" --set train.max_steps=1 \
  --set run.name=make-data --resume auto >/dev/null
# Graph-token data answers the upstream split rewritten in its encoding.
encoding=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["generated"].get("encoding", "sentences"))' "$scratch/prosqa/qa.json")
if [ "$encoding" != sentences ]; then
  rm -f "$scratch/upstream.json"
  "$BIN" data prosqa-encode "$UPSTREAM" --encoding "$encoding" --out "$scratch/upstream.json" >/dev/null
  UPSTREAM=$scratch/upstream.json
fi
# Up to JOBS arms at a time; the next one starts as soon as any of them ends (wait -n).
for arm in $ARMS; do
  # --resume auto: a rerun with the same SCRATCH continues (or just evaluates) the arms it finds.
  OMP_NUM_THREADS=1 "$BIN" train configs/coconut-prosqa.toml "${sets[@]}" --set run.name="$arm" \
    --set objective.arm="$arm" --resume auto >>"$scratch/$arm.log" 2>&1 &
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done

for arm in $ARMS; do
  ck=$(ls -d "$scratch/runs/$arm/checkpoints/step-"* | tail -n 1)
  for set in test upstream; do
    file=$scratch/prosqa/test.json
    [ "$set" = upstream ] && file=$UPSTREAM
    OMP_NUM_THREADS=2 "$BIN" eval "$ck" --qa "$file" --threads 2 --out "$scratch/eval/$arm-$set" >/dev/null
  done
done
# The figure: the Coconut arm's loss (its stage switches show), else the last arm's.
last=${ARMS##* }
case " $ARMS " in *" coconut "*) last=coconut ;; esac
"$BIN" curve "$scratch/runs/$last" --metrics loss --out "$PNG" >/dev/null

python3 - "$scratch" "$STEPS" "$BATCH" "$OUT" "$(basename "$PNG")" "${SET:-}" "$last" $ARMS <<'PY'
import json, sys, os
scratch, steps, batch, out, png, extra, drawn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
arms = sys.argv[8:]
import subprocess, datetime
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
when = f"{datetime.date.today()}, {os.cpu_count()} cores ({cpu}), commit {commit}"
ev = lambda arm, s: json.load(open(os.path.join(scratch, "eval", f"{arm}-{s}", "eval.json")))
info = json.load(open(os.path.join(scratch, "prosqa", "qa.json")))
lines = [
    f"# COCONUT on ProsQA-style graphs (`scripts/bench-coconut.sh {steps} {batch} \"{' '.join(arms)}\"`)",
    "",
    f"`configs/coconut-prosqa.toml`{' with `' + extra + '`' if extra else ''}, {steps} steps of batch {batch} per arm, same",
    f"generated data ({info['generated']}), seed and shape; CPU, fp32, one thread per arm,",
    f"{os.environ.get('JOBS', '2')} arms at a time (s / step is under that sharing). {when}.",
    "Accuracy: greedy answers, the text after the last `#` equal to the answer (the reference's rule);",
    "\"tokens\": mean generated tokens (thoughts not counted).",
    "",
    "| arm | held-out graphs | tokens | upstream ProsQA valid | tokens | thoughts | thought norm / embedding norm | final train loss | val loss | s / step |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for arm in arms:
    t, u = ev(arm, "test"), ev(arm, "upstream")
    norm = "–" if t["thought_norm"] is None else f"{t['thought_norm']:.1f} / {t['embed_norm']:.2f}"
    recs = [json.loads(l) for l in open(os.path.join(scratch, "runs", arm, "metrics.jsonl"))]
    last = [r for r in recs if "loss" in r][-1]
    vals = [r["val_loss"] for r in recs if r.get("val_loss") is not None]
    val = f"{vals[-1]:.3f}" if vals else "–"
    lines.append(f"| {arm} | {100 * t['accuracy']:.1f} % | {t['mean_generated_tokens']:.1f} | "
                 f"{100 * u['accuracy']:.1f} % | {u['mean_generated_tokens']:.1f} | {t['thoughts_per_question']:.0f} | {norm} | "
                 f"{last['loss']:.3f} | {val} | {last['elapsed_s'] / last['step']:.3f} |")
lines += ["", f"![training loss of the {drawn} arm]({png})", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
