#!/usr/bin/env bash
# Issue 13 items 2, 4, 5: the long EAGLE-2 / FSPAD pair on ~10x the first heads' data, milestones for the learning curve.
#
#   bash scripts/long_runs.sh train       # EAGLE-2 + FSPAD as one head group: same batches, one target forward per step
#   bash scripts/long_runs.sh carry       # checkpoint now (a running job saves its step), -> milestones/smollm2-pair
#   bash scripts/long_runs.sh milestones  # held-out tau of every saved 1,000-step milestone (fp32, static 8/3/4)
#     (two heads on two cores: ONLY=eagle2 BENCH_CORE=0 ... & ONLY=fspad BENCH_CORE=1 ... milestones)
#   bash scripts/long_runs.sh shipped     # the first shipped heads on the same held-out set (the curve's start)
#   bash scripts/long_runs.sh data        # tokens per example of the run's data (the curve's x axis)
#   bash scripts/long_runs.sh curve       # benchmarks/results/learning-curve-smollm2/{curve.md,curve.png}
#   PHASE=poss bash scripts/long_runs.sh train  # after the pair: PosS-2 initialised from its final FSPAD head
#   PHASE=pair2 bash scripts/long_runs.sh train # after the pair: the pair again on new data, from its final heads
#   PHASE=poss2 bash scripts/long_runs.sh train # after pair2: PosS-2 again, from pair2's final FSPAD head, fresh data
#   bash scripts/long_runs.sh ship        # the final heads -> src/fspad_hf/heads/<target>-<method> (+ cards)
#   CARD_ONLY=1 bash scripts/long_runs.sh ship  # rebuild only the shipped heads' cards (after a template change)
#
# Why online features and one head group: a session lasts three hours and the next one may be on a fresh machine
# with only what was committed. Offline features (~1.16 KB per token, ~12 GB for 10M tokens) cannot be committed
# and took most of a session to rebuild, so the pair computes the target's features inside the training step
# (`fspad-hf train` without --features_dir) and shares them: both heads learn from the same batch, so the target
# runs once per step instead of twice (training/objective.py GroupObjective). Measured on a 2-core AMD EPYC
# (AVX-512 BF16), 1 thread: target bf16 forward over 4 x 448 tokens 3.7 s; one FSPAD step online 4.6 s.
#
# Resuming: on this machine `train` resumes from runs/long/pair's newest complete checkpoint. On another machine
# it continues from the committed carry (int8 heads + trainer state; `fspad-hf carry`): same step, same data
# position (the data and its order are fixed by --data, --split_seed and --seed), a fresh AdamW and a new LR
# warm-up (the issue allows restarting the optimizer state). Make and commit a carry before a session ends.
#
# Two pairs: PAIR=smollm2 (the default) and PAIR=qwen (Qwen2.5-Coder-0.5B-Instruct; same recipe, its own run,
# carry and curve folders, 4,000 steps on ~6M tokens: a 0.5B target costs ~4x per step). Run them one per core:
#   CORE=1 PAIR=qwen bash scripts/long_runs.sh train
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-all}
PAIR=${PAIR:-smollm2}
case $PAIR in
  smollm2) TARGET=smollm2; RUN=runs/long/pair; CARRY=milestones/smollm2-pair; OUT=benchmarks/results/learning-curve-smollm2
           DEFAULT_STEPS=12000; DEFAULT_ANNEAL=3500; DEFAULT_DATA=data/smollm2/distilled.jsonl:2748,sharegpt:0-4500
           PAIR2_DATA=sharegpt:4500-13500; POSS2_DATA=sharegpt:13500-17000; PAIR2_NOTE="every assistant turn of ShareGPT conversations 4500-13499 (new data, about one epoch in 12,000 steps)"
           SHIPPED_NOTE="3,000 steps on ~3.3k first-turn examples, multi-epoch"; GOAL=2.6; INT8=(); DEFAULT_POSS_STEPS=1500
           DATA_NOTE="2,748 self-distilled SmolLM2 answers + every assistant turn of ShareGPT conversations 0-4499" ;;
  # Qwen: the 768 committed self-distilled answers and ShareGPT 0-2500 all turns (~5.4M tokens)
  qwen) TARGET=qwen-coder-0.5b; RUN=runs/long/qwen-pair; CARRY=milestones/qwen-pair; OUT=benchmarks/results/learning-curve-qwen
        DEFAULT_STEPS=4000; DEFAULT_ANNEAL=1000; DEFAULT_DATA=data/qwen-coder-0.5b/distilled.jsonl:768,sharegpt:0-2500
        # PosS: 1,000 steps, not SmolLM2's 1,500: there held-out tau was 2.329 / 2.307 / 2.320 at 500 / 1,000 / 1,500
        # steps (flat after 500), and a Qwen PosS step (unroll 3) costs ~4x a SmolLM2 pair step (~17 s vs ~4 s on a Zen 4)
        DEFAULT_POSS_STEPS=1000
        SHIPPED_NOTE="1,200 steps on ~1.6k first-turn examples, multi-epoch"; GOAL=2.4; INT8=(--int8)
        DATA_NOTE="768 self-distilled Qwen answers + every assistant turn of ShareGPT conversations 0-2499"
        PAIR2_DATA=sharegpt:2500-7000; PAIR2_NOTE="every assistant turn of ShareGPT conversations 2500-6999 (new data)" ;;
  *) echo "PAIR must be smollm2 or qwen, got '$PAIR'" >&2; exit 2 ;;
esac
STEPS=${STEPS:-$DEFAULT_STEPS}
SAVE=${SAVE:-500}           # checkpoint every SAVE steps (a kill loses at most this much)
MILESTONE=${MILESTONE:-1000}  # learning-curve points (held-out bench; eval loss at the same steps)
CORE=${CORE:-0}
RECIPE=${RECIPE:-}
# The LR: warm-up, constant 5e-4, then a linear anneal to 0 over the last ANNEAL steps (counted by the global
# step, so a run continued from a carry, which warms up again, anneals at the same steps). Steps 0-8,300 ran at
# constant LR and the held-out tau flattened in epoch 2 (curve points 6,000 and 7,000): the anneal was added then.
ANNEAL=${ANNEAL:-$DEFAULT_ANNEAL}
# ShareGPT all-turn windows: 500 conversations give ~1.1M tokens (~2,600 windows of <=448 tokens, half of them
# loss tokens), so 0-4500 is ~9.7M tokens, plus the first 2,748 self-distilled answers (~0.74M). The counts are
# pinned so that the data never changes under a run that continues elsewhere. Conversations >= 17000 are the
# held-out questions: never here.
DATA_SET=${DATA:-}
DATA=${DATA:-$DEFAULT_DATA}
# PHASE=poss (issue 13 item 4): a PosS-2 head (2 specialists, draft positions 1-2 and 3+, HASS-unrolled 3 steps)
# initialised from the pair's FSPAD head at its last step (the committed carry), on the same data; its own run,
# carry (milestones/<pair>-poss) and milestones (poss-N.json in the same curve folder, N = pair steps + PosS steps).
# PHASE=pair2: the pair again, both heads initialised from the pair's final heads (its carry), on NEW data
# (PAIR2_DATA: the ShareGPT conversations after the pair's), same LR recipe (warm-up, 5e-4, anneal over the last
# 3,500 steps). Why: past one epoch the held-out tau of the pair rose ~0.15 per doubling of tokens seen, and the
# trend needs fresh tokens, not repeats (benchmarks/results/learning-curve-smollm2/curve.md). Its milestones
# are named by the lineage's total step (pair steps + N) and priced by data-from-<pair steps>.json.
PHASE=${PHASE:-pair}
PAIR_STEPS=$STEPS  # a PosS milestone is named by its lineage's total step (pair + PosS steps): the curve's x axis
GROUP=1  # the phase trains a head group (one subfolder per head in its checkpoints)
need_pair_carry() {  # [carry folder, its run's last step]: a phase starts from a finished phase's carry
  local carry=${1:-$CARRY} steps=${2:-$STEPS}
  [[ $STEP == train ]] || return 0
  [[ -f $carry/trainer_state.json ]] || { echo "no carry in $carry: train (and carry) the phase it starts from first" >&2; exit 1; }
  at=$(python -c "import json; print(json.load(open('$carry/trainer_state.json'))['global_step'])")
  (( at >= steps )) || { echo "the carry $carry is at step $at of $steps: finish that phase (and carry) first" >&2; exit 1; }
}
POSS_ARGS=(--method fspad --num_draft_layers 2 --positions_per_layer 2 --unroll_steps 3)  # PosS-2, HASS-unrolled 3 steps
case $PHASE in
  pair) METHODS="eagle2 fspad"; HEAD_ARGS=(--method eagle2,fspad); LR=${LR:-5e-4} ;;
  pair2) need_pair_carry
        if [[ -z $DATA_SET ]]; then DATA=$PAIR2_DATA; fi  # DATA=... still overrides
        DATA_NOTE=$PAIR2_NOTE
        HEAD_ARGS=(--method eagle2,fspad --init_from "$CARRY")  # a group carry: each head from its own subfolder
        RUN=${RUN}2; CARRY=${CARRY}2; STEPS=${PAIR2_STEPS:-12000}; ANNEAL=${PAIR2_ANNEAL:-3500}; METHODS="eagle2 fspad"
        LR=${LR:-5e-4} ;;
  poss) INIT=$CARRY/fspad
        need_pair_carry
        GROUP=0
        RUN=$RUN-poss; CARRY=${CARRY%-pair}-poss; STEPS=${POSS_STEPS:-$DEFAULT_POSS_STEPS}; ANNEAL=${POSS_ANNEAL:-500}; METHODS=poss
        MILESTONE=${POSS_MILESTONE:-500}
        # 1e-4, not the pair's 5e-4: the FSPAD head it starts from was annealed to LR 0, and at 5e-4 its training
        # top-1 at position 1 fell from 0.633 to 0.582 within 150 steps (session 13) before PosS had learned anything
        LR=${POSS_LR:-1e-4}
        HEAD_ARGS=("${POSS_ARGS[@]}" --init_from "$INIT") ;;
  # PHASE=poss2: the PosS-2 recipe of PHASE=poss, initialised from pair2's final FSPAD head (lineage step pair +
  # pair2 steps), on fresh conversations (POSS2_DATA: after pair2's, before the held-out ones >= 17000). Its
  # milestones are poss2-<lineage step>.json, priced by data-from-12000.json (which lists poss2) and by its own
  # data-from-<lineage step>.json; it ships as <target>-poss, replacing the PosS head from the first pair.
  poss2) [[ -n ${POSS2_DATA:-} ]] || { echo "PHASE=poss2 follows PHASE=pair2, which PAIR=$PAIR has not run" >&2; exit 2; }
        P2_STEPS=${PAIR2_STEPS:-12000}; INIT=${CARRY}2/fspad
        need_pair_carry "${CARRY}2" "$P2_STEPS"
        if [[ -z $DATA_SET ]]; then DATA=$POSS2_DATA; fi
        range=${POSS2_DATA#sharegpt:}  # a half-open range a-b: conversations a to b-1
        DATA_NOTE="every assistant turn of ShareGPT conversations ${range%-*}-$(( ${range#*-} - 1 )) (new data)"
        GROUP=0; PAIR_STEPS=$((STEPS + P2_STEPS))
        RUN=${RUN}2-poss; CARRY=${CARRY%-pair}-poss2; STEPS=${POSS_STEPS:-$DEFAULT_POSS_STEPS}; ANNEAL=${POSS_ANNEAL:-500}
        METHODS=poss2; MILESTONE=${POSS_MILESTONE:-500}; LR=${POSS_LR:-1e-4}
        HEAD_ARGS=("${POSS_ARGS[@]}" --init_from "$INIT") ;;
  *) echo "PHASE must be pair, pair2, poss or poss2, got '$PHASE'" >&2; exit 2 ;;
esac
# The target's dtype (and the heads' autocast) is the one that makes a step cheaper on this CPU, measured once
# (scripts/pick_train_dtype.py): bf16 where the CPU has bf16 matrix instructions, fp32 where it has not (5x
# cheaper there). Features differ by bf16 rounding only; the curve is benched in fp32 either way.
mkdir -p runs/long
LOG=runs/logs/long-pair.log; [[ $PAIR == smollm2 ]] || LOG=runs/logs/long-$PAIR-pair.log
[[ $PHASE == pair ]] || LOG=runs/logs/long-$PAIR-$PHASE.log
DTYPE_CACHE=runs/long/train-dtype.json; [[ $PAIR == smollm2 ]] || DTYPE_CACHE=runs/long/train-dtype-$PAIR.json
TRAIN_DTYPE=${TRAIN_DTYPE:-$(taskset -c "${CORE:-0}" python scripts/pick_train_dtype.py "$TARGET" "$DTYPE_CACHE")}
AMP=(); [[ $TRAIN_DTYPE == bfloat16 ]] && AMP=(--bf16)
T=(--target "$TARGET" --target_dtype "$TRAIN_DTYPE")
mkdir -p runs/logs runs/long "$OUT"
pin() { local core=$1; shift; OMP_NUM_THREADS=1 nice -n 10 taskset -c "$core" "$@"; }

if [[ $STEP == train || $STEP == all ]]; then
  df -h . | tail -1
  continue=()
  [[ -f $CARRY/carry.json ]] && continue=(--continue_from "$CARRY")
  # shellcheck disable=SC2086  # RECIPE is a list of options
  pin "$CORE" fspad-hf train "${T[@]}" --data "$DATA" --all_turns --max_length 448 "${HEAD_ARGS[@]}" \
    --draft_vocab_size 8192 --per_device_train_batch_size 4 --learning_rate "$LR" \
    --lr_scheduler_type constant_with_warmup --warmup_steps 100 --anneal_steps "$ANNEAL" --save_steps "$SAVE" --save_total_limit 100 \
    --logging_steps 50 --eval_fraction 0.005 --eval_strategy steps --eval_steps "$MILESTONE" --eval_unroll_steps 3 \
    --seed 0 --use_cpu "${AMP[@]}" --save_on_signal true --disable_tqdm true --max_steps "$STEPS" --output_dir "$RUN" "${continue[@]}" $RECIPE \
    >> "$LOG" 2>&1
fi

newest_checkpoint() { python -c "from fspad_hf.training.checkpoints import last_complete_checkpoint as f; print(f('$RUN') or '')"; }
if [[ $STEP == carry ]]; then
  # a run in progress checkpoints its current step first (SIGUSR1, --save_on_signal): no step since the last
  # save_steps multiple is lost when the session ends
  pid=$(pgrep -f "fspad-hf train .*--output_dir $RUN( |$)" | head -1 || true)
  if [[ -n $pid ]]; then
    before=$(newest_checkpoint)
    kill -USR1 "$pid"
    echo "asked the training run ($pid) for a checkpoint; waiting for the step in progress to end"
    while [[ $(newest_checkpoint) == "$before" ]] && kill -0 "$pid" 2> /dev/null; do sleep 5; done
  fi
  ckpt=$(newest_checkpoint)
  [[ -n $ckpt ]] || { echo "no complete checkpoint in $RUN" >&2; exit 1; }
  rm -rf "$CARRY.new" && fspad-hf carry --checkpoint "$ckpt" --output "$CARRY.new" && rm -rf "$CARRY" && mv "$CARRY.new" "$CARRY"
  du -sh "$CARRY"
fi

if [[ $STEP == milestones || $STEP == all ]]; then
  # a milestone is a checkpoint at a multiple of MILESTONE steps (local), or a committed carry at such a step
  for ckpt in "$RUN"/checkpoint-* "$CARRY"; do
    [[ -f $ckpt/trainer_state.json ]] || continue
    step=$(python -c "import json; print(json.load(open('$ckpt/trainer_state.json'))['global_step'])")
    (( step % MILESTONE == 0 )) || continue
    for method in ${ONLY:-$METHODS}; do  # ONLY=fspad: one head per call, to bench two heads on two cores
      result=$OUT/$method-$step.json; [[ $PHASE == pair ]] || result=$OUT/$method-$((PAIR_STEPS + step)).json
      [[ -f $result ]] && continue
      folder=$ckpt/$method; (( GROUP )) || folder=$ckpt  # a head group has one subfolder per head
      pin "${BENCH_CORE:-1}" fspad-hf bench --target "$TARGET" --dtype float32 --threads 1 \
        --questions data/heldout/sharegpt-heldout.jsonl --max_new_tokens 64 --pld_tokens 0 --no_plots \
        --head "$method=$folder@8,3,4" --output "$result" > "runs/logs/long-bench-$PAIR-$method-$step.log" 2>&1
    done
  done
fi

if [[ $STEP == shipped || $STEP == all ]]; then  # the first shipped heads on the same held-out set: the curve's start
  [[ -f $OUT/shipped.json ]] || pin "${BENCH_CORE:-1}" fspad-hf bench --target "$TARGET" --dtype float32 --threads 1 \
    --questions data/heldout/sharegpt-heldout.jsonl --max_new_tokens 64 --pld_tokens 0 --no_plots \
    --head "eagle2=$TARGET-eagle2@8,3,4" --head "fspad=$TARGET-fspad@8,3,4" --output "$OUT/shipped.json" \
    > "runs/logs/long-bench-$PAIR-shipped.log" 2>&1
fi

if [[ $STEP == data || $STEP == all ]]; then  # what one training step sees, for the curve's x axis
  # a phase on other data prices its steps by its own file (benchmarks/learning_curve.py, data-from-<N>.json)
  # (the methods whose lineage it prices: a PosS head continued on the first data keeps the first pricing)
  data_file=$OUT/data.json; [[ $PHASE == pair2 || $PHASE == poss2 ]] && data_file=$OUT/data-from-$PAIR_STEPS.json
  [[ -f $data_file ]] || python - "$DATA" "$data_file" "$TARGET" "$METHODS" <<'EOF'
import json, sys
from fspad_hf.cli import DataArguments, _conversations, _tokenize
from fspad_hf.targets import load_target
data, out, target, methods = sys.argv[1:]
examples = _tokenize(load_target(target)[1], _conversations(DataArguments(data=data)), 448, all_turns=True)
n = len(examples)
json.dump({"source": data + " (all turns, 448-token windows)", "examples": n, "batch_size": 4,
           "mean_tokens": sum(len(e["input_ids"]) for e in examples) / n,
           "mean_loss_tokens": sum(sum(e["loss_mask"]) for e in examples) / n, "methods": methods.split()},
          open(out, "w"), indent=1)
EOF
fi

if [[ $STEP == ship ]]; then  # the heads at the run's last step, with the held-out bench of that step in the card
  # The card's benchmark is the learning curve's acceptance run, not a speed run: say so, and where speed is
  BENCH_NOTE="This is the held-out acceptance run of the learning curve ($OUT/): \
40 ShareGPT questions never trained on, float32, one thread, a static tree of 8 tokens (depth 3, top-k 4), \
on a 2-core machine, usually with a training run on the other core. Read its tau (tokens per target forward); its tokens/s and speed-up \
are not this head's speed. Speed-ups per machine and dtype, with tuned and adaptive trees, are in the fspad-hf \
README's benchmark grid (benchmarks/results/grid-summary.md)."
  ckpt=$RUN/checkpoint-$STEPS; [[ -d $ckpt ]] || ckpt=$CARRY  # the carry holds int8 weights: dequantized
  at=$(python -c "import json; print(json.load(open('$ckpt/trainer_state.json'))['global_step'])")
  (( at == STEPS )) || { echo "$ckpt is at step $at, not the run's last step $STEPS: train (and carry) first" >&2; exit 1; }
  pre=0; [[ $PHASE == pair ]] || pre=$PAIR_STEPS
  # tokens seen by the lineage (a later phase's steps priced by its own data), examples of this phase's data
  data_file=$OUT/data.json; [[ $PHASE == pair2 || $PHASE == poss2 ]] && data_file=$OUT/data-from-$PAIR_STEPS.json
  examples=$(python -c "import json; print(json.load(open('$data_file'))['examples'])")
  for method in $METHODS; do
    tokens=$(python -c "from benchmarks.learning_curve import read_phases, seen; from pathlib import Path; print(round(seen($pre + $STEPS, read_phases(Path('$OUT'), '$method'))))")
    heldout=$OUT/$method-$((pre + STEPS)).json
    [[ -f $heldout ]] || { echo "no held-out bench $heldout: run 'milestones' first" >&2; exit 1; }
    folder=$ckpt/$method; (( GROUP )) || folder=$ckpt
    init=""; [[ $PHASE == poss ]] && init=", initialised from the pair's FSPAD head at step $PAIR_STEPS"
    [[ $PHASE == pair2 ]] && init=", initialised from the pair's $method head at step $PAIR_STEPS (trained on $DEFAULT_DATA)"
    [[ $PHASE == poss2 ]] && init=", initialised from the FSPAD head at lineage step $PAIR_STEPS (the pair, then pair2 on $PAIR2_DATA)"
    name=$method; [[ $PHASE == poss2 ]] && name=poss  # the newest PosS head replaces the first one
    python scripts/finalize_heads.py --checkpoint "$folder" --name "$TARGET-$name" --tree 8,3,4 "${INT8[@]}" \
      --data "$DATA_NOTE ($examples windows of <= 448 tokens, all turns, online $TRAIN_DTYPE target features)$init" \
      --lr_schedule "100-step warm-up, constant $LR, linear anneal to 0 over the last $ANNEAL steps (AdamW and warm-up restarted at each carry to another machine)" \
      --tokens "$tokens" --heldout "$heldout" --benchmark "$heldout" --command "bash scripts/long_runs.sh train (PAIR=$PAIR PHASE=$PHASE)" \
      --benchmark_note "$BENCH_NOTE" ${CARD_ONLY:+--card_only}
  done
fi

if [[ $STEP == curve || $STEP == all ]]; then
  python benchmarks/learning_curve.py "$OUT" --shipped "$SHIPPED_NOTE" --goal "fspad=$GOAL"
fi
