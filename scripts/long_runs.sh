#!/usr/bin/env bash
# Issue 13 items 2, 4, 5: the long EAGLE-2 / FSPAD pair on ~10x today's data, milestones for the learning curve.
#
#   bash scripts/long_runs.sh features    # offline bf16 features: all-turn ShareGPT windows + self-distilled answers
#   CORE=1 bash scripts/long_runs.sh features distilled,a   # only these feature sets, one after another, on core 1
#   bash scripts/long_runs.sh train       # EAGLE-2 and FSPAD, same data / steps / seed, one core each, niced
#   bash scripts/long_runs.sh milestones  # held-out tau of every saved milestone (fp32, static 8/3/4) -> curve
#   bash scripts/long_runs.sh curve       # benchmarks/results/learning-curve-smollm2/{curve.md,curve.png}
#
# Everything resumes: feature shards are hash-checked and only missing ones are extracted; training resumes
# from the last complete checkpoint; a milestone already benchmarked is skipped. On a fresh machine the
# features are rebuilt (they are not committed: ~1.16 KB per token, ~12 GB for 10M tokens; check `df -h`).
# Milestones: every MILESTONE steps the head is copied to runs/long/<method>/milestone-<step>; commit a small
# int8 copy of the newest one (scripts/finalize_heads.py) so another machine can continue from it with
# --init_from (the optimizer state restarts: warm up again, as the issue allows).
#
# Budget on this machine (2-core Sapphire Rapids, 1 thread per job): extraction ~1,000 tokens/s, so 10M
# tokens take ~3 h per core; training ~0.7 s/step at batch 4 x 448 tokens (~2,500 tokens/step), so one
# pass over 10M tokens is ~4,000 steps (~47 min) per head. RECIPE holds the options the recipe study
# (scripts/recipe_study.sh, benchmarks/results/recipe-smollm2/summary.md) picks; set it before `train`.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-all}
STEPS=${STEPS:-12000}
MILESTONE=${MILESTONE:-1500}
RECIPE=${RECIPE:-}
# ShareGPT all-turn windows: 500 conversations give ~1.1M tokens (~2,600 windows of <=448 tokens, half of them
# loss tokens; measured on conversations 0-499 and 3000-3499), so 0-4500 is ~9.7M tokens, plus ~0.74M distilled.
# Two halves so that each core extracts one. Conversations >= 17000 are the held-out questions: never here.
SHAREGPT_A=${SHAREGPT_A:-sharegpt:0-2250}
SHAREGPT_B=${SHAREGPT_B:-sharegpt:2250-4500}
DISTILLED=${DISTILLED:-data/smollm2/distilled.jsonl}
T=(--target smollm2 --target_dtype bfloat16)
FEAT_A=runs/long-feat-sharegpt-a FEAT_B=runs/long-feat-sharegpt-b FEAT_D=runs/long-feat-distilled
FEATURES="$FEAT_D/features,$FEAT_A/features,$FEAT_B/features"
OUT=benchmarks/results/learning-curve-smollm2
mkdir -p runs/logs runs/long "$OUT"
pin() { local core=$1; shift; OMP_NUM_THREADS=1 nice -n 10 taskset -c "$core" "$@"; }

extract() {  # extract SET CORE: one feature set (resumes: shards already written and hash-checked are kept)
  local set=$1 core=$2 out data extra=()
  case $set in
    distilled) out=$FEAT_D data=$DISTILLED ;;
    a) out=$FEAT_A data=$SHAREGPT_A extra=(--all_turns) ;;
    b) out=$FEAT_B data=$SHAREGPT_B extra=(--all_turns) ;;
    *) echo "unknown feature set $set (distilled, a, b)" >&2; return 2 ;;
  esac
  echo "[features] $set -> $out on core $core $(date +%T)"
  pin "$core" fspad-hf prepare "${T[@]}" --max_length 448 --features "${extra[@]}" --data "$data" \
    --output_dir "$out" >> "runs/logs/long-features-$set.log" 2>&1
  echo "[features] $set done $(date +%T)"; du -sh "$out/features"
}
if [[ $STEP == features || $STEP == all ]]; then
  df -h . | tail -1
  if [[ -n ${2:-} ]]; then  # the named sets, in order, on $CORE
    IFS=, read -ra sets <<< "$2"
    for set in "${sets[@]}"; do extract "$set" "${CORE:-0}"; done
  else
    { extract distilled 0 && extract a 0; } &
    extract b 1 &
    wait
  fi
fi

train_one() {  # train_one METHOD CORE
  local method=$1 core=$2 out=runs/long/$1
  # shellcheck disable=SC2086  # RECIPE is a list of options
  pin "$core" fspad-hf train "${T[@]}" --features_dir "$FEATURES" --method "$method" \
    --draft_vocab_size 8192 --per_device_train_batch_size 4 --learning_rate 5e-4 \
    --lr_scheduler_type constant_with_warmup --warmup_steps 100 --save_steps "$MILESTONE" --save_total_limit 100 \
    --logging_steps 50 --eval_fraction 0.005 --eval_strategy steps --eval_steps "$MILESTONE" --eval_unroll_steps 3 \
    --seed 0 --use_cpu --bf16 --disable_tqdm true --max_steps "$STEPS" --output_dir "$out" $RECIPE \
    > "runs/logs/long-$method.log" 2>&1
}
if [[ $STEP == train || $STEP == all ]]; then
  train_one eagle2 0 &
  train_one fspad 1 &
  wait
fi

if [[ $STEP == milestones || $STEP == all ]]; then
  for method in eagle2 fspad; do
    for ckpt in runs/long/$method/checkpoint-*; do
      [[ -f $ckpt/config.json ]] || continue
      step=${ckpt##*-}
      result=$OUT/$method-$step.json
      [[ -f $result ]] && continue
      pin 0 fspad-hf bench --target smollm2 --dtype float32 --threads 1 --questions data/heldout/sharegpt-heldout.jsonl \
        --max_new_tokens 64 --pld_tokens 0 --no_plots --head "$method=$ckpt@8,3,4" --output "$result" \
        > "runs/logs/long-bench-$method-$step.log" 2>&1
    done
  done
fi

if [[ $STEP == curve || $STEP == all ]]; then
  python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for path in sorted(out.glob("*-*.json")):
    method, step = path.stem.rsplit("-", 1)
    summary = json.loads(path.read_text())["methods"][method]["overall"]
    rows.append((method, int(step), summary["tau"], summary.get("identical_turns")))
rows.sort()
tokens_per_step = 4 * 448  # upper bound: batch 4 x 448-token windows
lines = ["| method | step | training tokens (<=) | held-out tau | identical turns |", "|---|---|---|---|---|"]
lines += [f"| {m} | {s} | {s * tokens_per_step:,} | {t:.3f} | {i} |" for m, s, t, i in rows]
(out / "curve.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for method in sorted({r[0] for r in rows}):
        pts = [(s * tokens_per_step, t) for m, s, t, _ in rows if m == method]
        plt.plot(*zip(*pts), marker="o", label=method)
    plt.xlabel("training tokens seen"); plt.ylabel("held-out tau (fp32, static 8/3/4)"); plt.legend()
    plt.savefig(out / "curve.png", dpi=120)
except ImportError:
    print("matplotlib missing: no plot")
EOF
fi
