#!/usr/bin/env bash
# Run one timing command on a quiet machine: pause (SIGSTOP) every niced fspad-hf job (nice >= 10, e.g. the
# long feature extraction / training runs of scripts/long_runs.sh), run the command at high priority, resume
# them (SIGCONT) even if the command fails or is interrupted.
#   bash benchmarks/quiet.sh fspad-hf bench ...
# Paused jobs keep their memory and resume where they were; their wall time grows by the pause.
set -uo pipefail
# niced fspad-hf commands only (not kernel threads, not someone's niced test run)
mapfile -t PIDS < <(ps -eo pid=,ni=,args= | awk '$2 >= 10 && /fspad-hf (prepare|train|bench|calibrate)/ {print $1}')
resume() { [[ ${#PIDS[@]} -gt 0 ]] && kill -CONT "${PIDS[@]}" 2>/dev/null; }
trap resume EXIT
[[ ${#PIDS[@]} -gt 0 ]] && kill -STOP "${PIDS[@]}" 2>/dev/null
echo "[quiet] paused ${#PIDS[@]} niced processes $(date +%T); load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
nice -n "${QUIET_NICE:--10}" "$@"
rc=$?
echo "[quiet] done $(date +%T) (rc $rc); resuming" >&2
exit $rc
