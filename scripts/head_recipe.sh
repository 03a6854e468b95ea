# Shared training recipe of scripts/{smollm2,qwen}_heads.sh (sourced, not run). The caller sets
#   T=(--target NAME --target_dtype bfloat16)   FEATS=dir1,dir2,...   SAVE_STEPS=N
# Identical features, schedule, seed and draft vocabulary for every head; only the method switches differ.
# Constant learning rate after warm-up, so a checkpoint at step N is the N-step head of the same recipe.
# Tree defaults are set when a checkpoint is shipped (scripts/finalize_heads.py --tree).
train() {  # train METHOD OUTPUT STEPS [extra args...]
  local method=$1 out=$2 steps=$3; shift 3
  local common=("${T[@]}" --features_dir "$FEATS" --draft_vocab_size 8192 --per_device_train_batch_size 4
                --learning_rate 5e-4 --lr_scheduler_type constant_with_warmup --warmup_steps 50
                --save_steps "$SAVE_STEPS" --save_total_limit 20 --logging_steps 20 --eval_fraction 0.01
                --eval_strategy steps --eval_steps 400 --eval_unroll_steps 3 --seed 0 --use_cpu --bf16
                --disable_tqdm true --tree_total_tokens 12 --tree_depth 4 --tree_top_k 4)
  OMP_NUM_THREADS=1 fspad-hf train "${common[@]}" --method "$method" --max_steps "$steps" --output_dir "$out" "$@" \
    > "$out.log" 2>&1
}
