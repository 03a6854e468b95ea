#!/usr/bin/env bash
# Exact commands that produced the SmolLM2-135M-Instruct heads (CPU, 2 cores). Each step resumes:
# distillation skips conversations already in the JSONL, training resumes from its last checkpoint.
set -euo pipefail
STEP=${1:-all}

# 1. Self-distillation: SmolLM2 (bf16, greedy) answers the first user turn of ShareGPT conversations 0-2399.
#    Session 1 stopped it after 666 conversations (data/smollm2/distilled.jsonl, committed; the shipped
#    heads were trained when it held the first 283).
if [[ $STEP == distill || $STEP == all ]]; then
  fspad-hf prepare --target smollm2 --target_dtype bfloat16 --max_conversations 2400 --max_turns 1 --regenerate \
    --batch_size 16 --max_new_tokens 256 --max_prompt_tokens 384 --output_dir runs/smollm2-data
  cp runs/smollm2-data/distilled.jsonl data/smollm2/distilled.jsonl
fi

# 2. Heads: identical data, steps, seed and schedule; only the method switches differ.
#    Data = the first $DISTILLED self-distilled answers (283 for the shipped heads) + raw ShareGPT first turns 2400-4399 (the head always learns the
#    target's own distribution: its soft labels come from the target's features on that text).
COMMON=(--target smollm2 --target_dtype bfloat16 --data data/smollm2/distilled.jsonl:${DISTILLED:-283},sharegpt:2400-4400 --max_turns 1
        --max_length 448 --draft_vocab_size 8192 --per_device_train_batch_size 4 --learning_rate 5e-4
        --lr_scheduler_type constant_with_warmup --warmup_steps 30 --max_steps ${MAX_STEPS:-2000} --save_steps 25
        --save_total_limit 3 --logging_steps 10 --eval_fraction 0.01 --seed 0 --use_cpu --bf16 --disable_tqdm true)
if [[ $STEP == train || $STEP == all ]]; then
  for method in ${METHODS:-fspad eagle2}; do
    OMP_NUM_THREADS=1 fspad-hf train "${COMMON[@]}" --method "$method" --output_dir "runs/smollm2-$method" \
      > "runs/train-smollm2-$method.log" 2>&1 &
  done
  wait
fi
