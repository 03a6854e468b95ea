#!/usr/bin/env bash
# Threads x load for the demo: which torch thread count decodes fastest on this machine, idle and with
# both cores busy at normal priority. Each cell is one `fspad-hf demo` run (head and plain timed alike);
# the results decide `fspad_hf.machine.default_threads` (cores free of normal-priority work).
#
#   bash benchmarks/threads_demo.sh [TARGET] [MAX_NEW_TOKENS]     -> benchmarks/results/threads-demo.txt
#
# Run it on an otherwise quiet machine: "idle" means nothing else runs. "loaded" starts one busy loop
# per core at normal priority for the duration of the cell.
set -euo pipefail
TARGET=${1:-smollm2}
N=${2:-96}
OUT=benchmarks/results/threads-demo.txt
mkdir -p "$(dirname "$OUT")"
{
  echo "# fspad-hf demo, target $TARGET, $N tokens; $(date -u +%F) on: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  echo "# load | dtype | threads | result line"
} > "$OUT"
busy() { for _ in $(seq "$(nproc)"); do (while :; do :; done) & done; }
for load in idle loaded; do
  for dtype in float32 bfloat16; do
    for threads in 1 "$(nproc)"; do
      pids=()
      if [[ $load == loaded ]]; then busy; pids=($(jobs -p)); fi
      line=$(fspad-hf demo --target "$TARGET" --dtype "$dtype" --threads "$threads" --max_new_tokens "$N" 2>/dev/null \
             | grep "^with " || echo "failed")
      [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null || true
      echo "$load | $dtype | $threads | $line" | tee -a "$OUT"
    done
  done
done
