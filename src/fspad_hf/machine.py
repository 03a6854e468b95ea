"""Facts about the machine at hand that speed decisions depend on (read, never assumed).

Thread choice. Decoding runs many small ops; with torch's default (one thread per core) a core that
another process keeps busy stalls every op (OpenMP threads spin and wait for the slowest), measured
here at 4 tokens/s with 2 threads vs 15 with 1 while both cores ran other normal-priority work. Niced
work yields, so it does not count as busy. `default_threads()` is therefore the number of cores not
busy with normal-priority work right now (at least 1); `benchmarks/threads_demo.sh` measures the
alternatives on a machine.
"""

from __future__ import annotations

import os
import platform
import time


def _cpu_times() -> tuple[int, int, int] | None:
    """(busy at normal priority, busy niced, total) jiffies over all cores, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(x) for x in fields[1:]]
    user, nice, system = values[0], values[1], values[2]
    return user + system, nice, sum(values[:8])


def busy_cores(interval: float = 0.3) -> float | None:
    """Cores busy with normal-priority (non-niced) work, averaged over `interval` seconds (None off Linux)."""
    start = _cpu_times()
    if start is None:
        return None
    time.sleep(interval)
    end = _cpu_times()
    total = end[2] - start[2]
    if total <= 0:
        return 0.0
    return (end[0] - start[0]) / total * (os.cpu_count() or 1)


def default_threads(interval: float = 0.3) -> int:
    """torch threads for decoding: the cores free of normal-priority work now (>= 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores(interval)
    if busy is None:
        return cores
    return max(1, min(cores, round(cores - busy)))


def cpu_description() -> str:
    """CPU model and the instruction-set features that decide bf16 / fp32 costs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(wanted) or 'no AVX2'})"


__all__ = ["busy_cores", "default_threads", "cpu_description"]
