"""What the decoding loop costs when it takes plain steps: ms per token against plain generate(), interleaved.

Every tree is priced out (a what-if cost model: a 1-token forward 10 ms, any larger one 10^6 ms), so the
adaptive policy verifies the root alone every round; what is left over plain generate() is the loop's own
overhead: with retrieval only (index lookups, the merge), and with the head (its probes and first rounds).

    OMP_NUM_THREADS=1 python benchmarks/plain_overhead.py --dtype float32 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fspad_hf
from fspad_hf.decoding.cost_model import CostModel, CostTable
from _models import add_model_args, load_models  # benchmarks/_models.py

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    target, tok, head = load_models(args)
    verify = CostTable("verify", list(range(1, 65)), [100], [[10.0] + [1e6] * 63], {"kind": "verify"}, 0.0, 1, 0.0)
    draft = CostTable("draft", [1, 64], [100], [[1.0, 1.0]], {"kind": "draft"}, 0.0, 1, 0.0)
    priced_out = CostModel(verify, draft, corrected=False)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    n = args.max_new_tokens
    common = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    runs = {
        "plain generate()": lambda: target.generate(ids, **common),
        "loop, retrieval only": lambda: target.generate(ids, custom_generate=fspad_hf.tree_generate, retrieval_branches=4,
                                                        tree_policy="adaptive", cost_model=priced_out, **common),
        "loop, head (no retrieval)": lambda: target.generate(ids, assistant_model=head, tree_policy="adaptive",
                                                             cost_model=priced_out, retrieval_branches=0, **common),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.reps):  # interleaved: load changes hit every method alike
        for name, run in runs.items():
            t = time.perf_counter()
            out = run()
            times[name].append((time.perf_counter() - t) * 1000 / (out.shape[1] - ids.shape[1]))
    base = statistics.median(times["plain generate()"])
    print(f"{args.target} {args.dtype}, {args.threads} thread(s), {n} tokens, median of {args.reps}")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"{name:28s} {ms:7.2f} ms/token  speed {base / ms:.3f}x of plain generate()")


if __name__ == "__main__":
    main()
