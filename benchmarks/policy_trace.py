"""Trace the adaptive tree policy against the static tree on a few Spec-Bench questions (issue 12, item 3/4).

Prints, per method: speed-up over plain generate() (same run, interleaved per question), tau, mean verified
nodes per round, mean predicted vs measured round time (the cost model's error), and the distribution of
the tree sizes the policy chose. For a quiet machine: `bash benchmarks/quiet.sh python benchmarks/policy_trace.py`.

    python benchmarks/policy_trace.py --dtype float32 --threads 1 --categories writing,math,rag --max_new_tokens 64
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.evaluation.benchmark import load_questions, prompt_ids
from _models import add_model_args, load_models  # benchmarks/_models.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl")
    ap.add_argument("--categories", default="writing,math,rag,summarization")
    ap.add_argument("--methods", default="@8,3,4;@8,3,4+adaptive;@8,3,4+retrieval4;@8,3,4+retrieval4+adaptive",
                    help="';'-separated head suffixes (TreeSettings.parse_suffix)")
    ap.add_argument("--output", default=None, help="optional JSON of the per-round traces")
    args = ap.parse_args()
    target, tok, head = load_models(args)
    suffixes = [s for s in args.methods.split(";") if s]
    methods = {s: TreeSettings.parse_suffix("x" + s)[1] for s in suffixes}
    questions = load_questions(args.questions, per_category=1, categories=args.categories.split(","))
    times = collections.defaultdict(float)
    traces = collections.defaultdict(list)
    for q in questions:
        ids = prompt_ids(tok, [{"role": "user", "content": q["turns"][0]}], target.device)
        runs = [("plain", {})] + [(s, {"assistant_model": head, **kw}) for s, kw in methods.items()]
        base = None
        for name, kw in runs:
            t0 = time.perf_counter()
            out = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, **kw)
            times[name] += time.perf_counter() - t0
            if name == "plain":
                base = out
                continue
            st = head.last_generation_stats
            traces[name].append({
                "category": q["category"], "identical": bool(torch.equal(out, base)), "tau": st.mean_accepted_length,
                "tree_sizes": st.tree_sizes, "accepted": st.accepted_lengths, "predicted_ms": st.predicted_ms,
                "measured_ms": [1000 * (d + v) for d, v in zip(st.draft_seconds, st.verify_seconds)],
                "draft_ms": [1000 * d for d in st.draft_seconds],
            })
    print(f"{args.target} {args.dtype} {args.threads} thread(s), {len(questions)} questions "
          f"({args.categories}), {args.max_new_tokens} new tokens; plain {times['plain']:.1f} s")
    for name in methods:
        tr = traces[name]
        sizes = [s for t in tr for s in t["tree_sizes"]]
        acc = [a for t in tr for a in t["accepted"]]
        meas = [m for t in tr for m in t["measured_ms"]]
        pred = [p for t in tr for p in t["predicted_ms"]]
        line = (f"  {name:28s} speed-up {times['plain'] / times[name]:.2f}x  tau {1 + sum(acc) / max(len(acc), 1):.2f}  "
                f"nodes/round {sum(sizes) / max(len(sizes), 1):5.1f}  measured {sum(meas) / max(len(meas), 1):6.1f} ms/round  "
                f"identical {sum(t['identical'] for t in tr)}/{len(tr)}")
        if pred:
            line += f"  predicted {sum(pred) / len(pred):6.1f} ms/round"
            hist = collections.Counter(sizes)
            line += "  sizes " + " ".join(f"{k}:{v}" for k, v in sorted(hist.items()))
        print(line)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "seconds": times, "traces": traces}, f)


if __name__ == "__main__":
    main()
