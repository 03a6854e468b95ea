"""Which target dtype makes a training step cheapest on this CPU: measured, cached per CPU (issue 13).

On a CPU with bf16 matrix instructions (AVX-512 BF16, AMX) a bf16 target forward is several times cheaper
than fp32; on one without them (AVX2 only) it is several times dearer. What this script measured (SmolLM2
decoder over [1, 448], 1 thread, min of 2): a 2-core AMD EPYC with AVX2 only, fp32 1.9 s, bf16 12.8 s; a
2-core Xeon with AMX, fp32 0.76 s, bf16 0.22 s (the cache file keeps the seconds it measured).
This times one decoder forward over [1, 448] in each dtype, 1 thread, and prints the cheaper dtype;
the answer is cached in `<cache>` keyed by the CPU model and flags, so it costs ~20 s once per machine.

    python scripts/pick_train_dtype.py smollm2 runs/long/train-dtype.json   # prints float32 or bfloat16
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from fspad_hf.targets import load_target


def cpu_key() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def forward_seconds(target: str, dtype: torch.dtype, reps: int = 2) -> float:
    model, _ = load_target(target, dtype=dtype)
    x = torch.randint(0, model.config.vocab_size, (1, 448))
    with torch.no_grad():
        model.model(x[:, :32])  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.model(x)
            times.append(time.perf_counter() - t)
    return min(times)


def main(target: str, cache: str) -> None:
    path, key = Path(cache), f"{target}/{cpu_key()}"
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        torch.set_num_threads(1)
        seconds = {name: forward_seconds(target, getattr(torch, name)) for name in ("float32", "bfloat16")}
        known[key] = {"seconds": seconds, "dtype": min(seconds, key=seconds.get)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
        print(f"measured [1, 448] decoder forward, 1 thread: {seconds}", file=sys.stderr)
    print(known[key]["dtype"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
