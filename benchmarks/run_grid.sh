#!/usr/bin/env bash
# Issue 12 item 5: the default head (adaptive policy + retrieval branches) against the static 8/3/4 tree,
# head-free retrieval, prompt lookup and plain generate(), on Spec-Bench (all 13 categories, PER questions
# each), one interleaved run per (target, dtype, threads) cell, with the cost tables in each result.
#   bash benchmarks/run_grid.sh [TARGETS] [DTYPES] [THREADS] [PER] [MAX_NEW_TOKENS]
#   bash benchmarks/run_grid.sh "smollm2" "float32 bfloat16" "1 2" 2 64      # the SmolLM2 grid
#   bash benchmarks/run_grid.sh qwen-coder-0.5b bfloat16 1 2 64
# Each cell runs through benchmarks/quiet.sh (niced background jobs paused, bench at high priority; with
# SHARED=1 nothing is paused and the bench runs pinned to core ${CORE:-1}, for 1-thread cells next to a
# long training run on the other core: ratios stay interleaved, absolute speeds drop) and
# resumes from its .partial.jsonl if interrupted. Results: benchmarks/results/grid-<machine>/<target>-<dtype>-<T>t/,
# <machine> from lscpu and /proc/cpuinfo (e.g. xeon-amx, epyc-zen4-avx512bf16, epyc-zen2-avx2) or $MACHINE.
# (Folders named before the Zen generation was detected: epyc-avx512bf16 was a Zen 4, epyc-avx2 a pre-Zen 4.)
# New heads against the ones they replace, in the same interleaved run: TAG=heads2 PREV=DIR (a folder holding the
# previous <head> folders, e.g. from `git archive <commit> src/fspad_hf/heads`) adds `default-prev` and `static-prev`
# and writes to grid-<machine>-<TAG>/.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${1:-smollm2}; DTYPES=${2:-"float32 bfloat16"}; THREADS=${3:-"1 2"}; PER=${4:-2}; N=${5:-64}
amd_zen() {  # "-zen2" ... "-zen5" from the CPU family and model (AMD's numbering); nothing if unknown
  local family model
  family=$(sed -n 's/^cpu family[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)
  model=$(sed -n 's/^model[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)
  case $family in
    26) echo -zen5 ;;
    25) if (( (model >= 0x10 && model <= 0x1f) || (model >= 0x60 && model <= 0x7f) || (model >= 0xa0 && model <= 0xaf) ));
        then echo -zen4; else echo -zen3; fi ;;
    23) echo -zen2 ;;
  esac
}
machine_tag() {  # CPU vendor + the best matrix instructions it has: what decides the costs here
  local name flags isa
  name=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  case $name in *EPYC*) name=epyc$(amd_zen) ;; *Xeon*) name=xeon ;; *) name=$(echo "$name" | tr -cs 'A-Za-z0-9' '-' | tr 'A-Z' 'a-z' | cut -c1-20) ;; esac
  if [[ $flags == *amx_bf16* ]]; then isa=amx; elif [[ $flags == *avx512_bf16* ]]; then isa=avx512bf16; else isa=avx2; fi
  echo "$name-$isa"
}
MACHINE=${MACHINE:-$(machine_tag)}
if [[ ${SHARED:-0} == 1 ]]; then run=(taskset -c "${CORE:-1}"); else run=(bash benchmarks/quiet.sh); fi
declare -A HEAD=([smollm2]=smollm2-fspad [qwen-coder-0.5b]=qwen-coder-0.5b-fspad)
for target in $TARGETS; do
  head=${HEAD[$target]}
  for dtype in $DTYPES; do
    for t in $THREADS; do
      out=benchmarks/results/grid-$MACHINE${TAG:+-$TAG}/$target-$dtype-${t}t
      prev=(); [[ -n ${PREV:-} ]] && prev=(--head "default-prev=$PREV/$head" --head "static-prev=$PREV/$head@8,3,4")
      [[ -f $out/results.json ]] && { echo "[grid] $out exists: skipped"; continue; }
      mkdir -p "$out"
      echo "[grid] $target $dtype $t thread(s) $(date +%T)"
      # calibrate (or load) the cost tables first, quietly, so no timed question pays for them
      OMP_NUM_THREADS=$t "${run[@]}" fspad-hf calibrate --target "$target" --dtype "$dtype" \
        --head "$head" --threads "$t" > "$out/calibrate.log" 2>&1
      OMP_NUM_THREADS=$t "${run[@]}" fspad-hf bench --target "$target" --dtype "$dtype" --threads "$t" \
        --questions ../shared/data/spec_bench/question.jsonl --per_category "$PER" --max_new_tokens "$N" \
        --head "default=$head" --head "static=$head@8,3,4" "${prev[@]}" --retrieval 4 --pld_tokens 10 --no_plots \
        --output "$out/results.json" > "$out/bench.log" 2>&1
      echo "[grid] done $(date +%T)"; head -12 "$out/results.md"
    done
  done
done
