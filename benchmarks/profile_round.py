"""Profile the tree-decoding loop per verification round: aten ops dispatched, host syncs, wall ms per phase.

    OMP_NUM_THREADS=1 python benchmarks/profile_round.py                       # SmolLM2 + smollm2-fspad, fp32
    python benchmarks/profile_round.py --configs static retrieval --prompts 2 --max_new_tokens 48

Method (see benchmarks/results/profile-round.md for the numbers):
- Phases. The loop's collaborators are looked up as globals of `fspad_hf.decoding.generation` at call time,
  so the script wraps them there: `draft` = the drafter's `draft` / `observe` / `feedback` (the drafter is
  wrapped in a proxy), `mask` = `tree_mask`, `forward` = `target_forward`, `verify` = `process_tree_scores`,
  `target_choices`, `accept`, `compact_cache`, `emit` = `_emit`, `stats` = `GenerationStats.add_round`.
  Anything else in the round (positions, tree ids, gathers of the accepted rows) is `other`. Accounting is
  phase switching: every instant of a round is charged to exactly one phase (the innermost wrapped call).
  A round runs from one `draft` call to the next (the last one to the end of the loop); the prefill and
  its first token are excluded.
- Ops: a `TorchDispatchMode` counts every aten op that reaches the dispatcher (after autograd and
  composite decomposition: what the backend kernels are asked to run), in a separate pass from timing
  (the mode itself costs host time).
- Host syncs: where a tensor value must reach Python (a CUDA stream sync on GPU; on CPU the same call
  sites): `aten._local_scalar_dense` (`.item()`, `int()`, `float()`, `bool()` of a tensor), ops whose
  output shape depends on values (`nonzero`, `masked_select`, `unique*`, boolean-mask indexing
  `index.Tensor` / `index_put_`, `repeat_interleave` without `output_size`), `equal`, and
  `Tensor.tolist()` / `Tensor.numpy()` (which bypass the dispatcher, so they are counted by a wrapper).
- Wall ms: `time.perf_counter` in a pass without the dispatch mode, after one warm-up generation.

Greedy output is checked against plain `generate()` for every prompt (`--no_check` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import subprocess
import time
from collections import Counter, defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fspad_hf.decoding import generation as gen
from fspad_hf.decoding.stats import GenerationStats
from fspad_hf.evaluation.benchmark import load_questions
from _models import add_model_args, load_models  # benchmarks/_models.py

PHASES = ("draft", "mask", "forward", "verify", "emit", "stats", "other")
WRAPPED = {  # generation-module global -> phase
    "tree_mask": "mask",
    "target_forward": "forward",
    "process_tree_scores": "verify",
    "target_choices": "verify",
    "accept": "verify",
    "compact_cache": "verify",
    "_emit": "emit",
}
CONFIGS = {
    "static": {"tree_policy": "static", "retrieval_branches": 0},
    "retrieval": {"tree_policy": "static", "retrieval_branches": 2},
    "adaptive": {"tree_policy": "adaptive", "retrieval_branches": 0},
    "adaptive+retrieval": {"tree_policy": "adaptive", "retrieval_branches": 2},
}
SHAPE_SYNC_OPS = {"nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "equal",
                  "_local_scalar_dense"}


class Recorder:
    """Per-round, per-phase wall time, op counts and sync counts (phase switching: one phase at a time)."""

    def __init__(self):
        self.round = -1  # -1 = prefill, -2 = after the loop (both excluded from the report)
        self.rounds = 0
        self.phase = "other"
        self.mark = time.perf_counter()
        self.ms = defaultdict(lambda: defaultdict(float))  # round -> phase -> ms
        self.ops = defaultdict(Counter)  # round -> phase -> ops
        self.syncs = defaultdict(Counter)  # round -> phase -> syncs
        self.op_names = defaultdict(Counter)  # phase -> op name -> count (rounds only)
        self.sync_names = defaultdict(Counter)  # phase -> sync kind -> count

    def switch(self, phase: str) -> str:
        now = time.perf_counter()
        self.ms[self.round][self.phase] += 1000 * (now - self.mark)
        self.mark, old, self.phase = now, self.phase, phase
        return old

    def new_round(self) -> None:
        self.switch(self.phase)
        self.round += 1

    def close(self) -> None:
        self.switch("other")
        self.rounds, self.round = self.round + 1, -2

    def count_op(self, name: str, sync: str | None) -> None:
        self.ops[self.round][self.phase] += 1
        if self.round >= 0:
            self.op_names[self.phase][name] += 1
        if sync:
            self.count_sync(sync)

    def count_sync(self, kind: str) -> None:
        self.syncs[self.round][self.phase] += 1
        if self.round >= 0:
            self.sync_names[self.phase][kind] += 1


REC: Recorder | None = None


def _sync_kind(func, args) -> str | None:
    name = func.overloadpacket.__name__
    if name in SHAPE_SYNC_OPS:
        return name
    if name in ("index", "index_put", "index_put_") and len(args) > 1:
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            return f"{name}[bool mask]"
    if name == "repeat_interleave" and func._overloadname == "Tensor":
        return "repeat_interleave[tensor]"
    return None


class CountOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if REC is not None:
            REC.count_op(func.overloadpacket.__name__, _sync_kind(func, args))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_host_reads():
    """Count `Tensor.tolist()` / `Tensor.numpy()` (they read memory without dispatching an op)."""
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name, fn):
        def counted(self, *a, **k):
            if REC is not None:
                REC.count_sync(name)
            return fn(self, *a, **k)
        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _in_phase(phase, fn):
    def wrapped(*a, **k):
        old = REC.switch(phase) if REC is not None else None
        try:
            return fn(*a, **k)
        finally:
            if REC is not None:
                REC.switch(old)
    return wrapped


class TimedDrafter:
    """Proxy of the loop's drafter: `draft` starts a round; draft / observe / feedback are the `draft` phase."""

    def __init__(self, inner):
        self.inner = inner

    def draft(self, *a, **k):
        if REC is not None:
            REC.new_round()
        return _in_phase("draft", self.inner.draft)(*a, **k)

    def observe(self, *a, **k):
        return _in_phase("draft", self.inner.observe)(*a, **k)

    def feedback(self, *a, **k):
        return _in_phase("draft", self.inner.feedback)(*a, **k)


@contextlib.contextmanager
def instrumented():
    """Wrap the generation module's collaborators (restored on exit)."""
    saved = {name: getattr(gen, name) for name in (*WRAPPED, "run_tree_decoding")}
    saved_add_round = GenerationStats.add_round
    saved_finish = getattr(GenerationStats, "finish", None)  # per call (after the loop), amortised over its rounds
    run = saved["run_tree_decoding"]

    def run_wrapped(model, input_ids, drafter, *a, **k):
        try:
            return run(model, input_ids, TimedDrafter(drafter), *a, **k)
        finally:
            if REC is not None:
                REC.close()

    for name, phase in WRAPPED.items():
        setattr(gen, name, _in_phase(phase, saved[name]))
    gen.run_tree_decoding = run_wrapped
    GenerationStats.add_round = _in_phase("stats", saved_add_round)
    if saved_finish is not None:
        GenerationStats.finish = _in_phase("stats", saved_finish)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(gen, name, fn)
        GenerationStats.add_round = saved_add_round
        if saved_finish is not None:
            GenerationStats.finish = saved_finish


def prompts_from(path: str, n: int, categories: list[str]) -> list[str]:
    qs = load_questions(path, per_category=1, categories=categories or None)
    return [q["turns"][0] for q in qs][:n]


def encode(tokenizer, text: str) -> torch.LongTensor:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    return ids


def generate(target, head, ids, max_new_tokens, config):
    with torch.no_grad():
        return target.generate(ids, assistant_model=head, do_sample=False, max_new_tokens=max_new_tokens, **config)


def profile_config(target, head, prompts, max_new_tokens, config, passes) -> dict:
    """Run every prompt in each pass; return per-round means and sync/op breakdowns."""
    global REC
    result = {}
    for pass_name in passes:
        recs = []
        for ids in prompts:
            REC = Recorder()
            mode = CountOps() if pass_name == "count" else contextlib.nullcontext()
            reads = counting_host_reads() if pass_name == "count" else contextlib.nullcontext()
            with instrumented(), reads, mode:
                out = generate(target, head, ids, max_new_tokens, config)
            recs.append((REC, out))
            REC = None
        result[pass_name] = recs
    return result


def summarise(recs: list, field: str) -> tuple[dict[str, float], int]:
    """Mean per round of `field` ('ms', 'ops' or 'syncs') by phase, over all rounds of all prompts."""
    totals, rounds = Counter(), 0
    for rec, _ in recs:
        table = getattr(rec, field)
        for r in range(rec.rounds):
            rounds += 1
            for phase in PHASES:
                totals[phase] += table[r][phase] if r in table else 0
    return {p: totals[p] / max(rounds, 1) for p in PHASES}, rounds


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--questions", default="/work/shared/data/spec_bench/question.jsonl")
    p.add_argument("--categories", nargs="*", default=["writing", "rag", "math_reasoning"],
                   help="one first-turn prompt per category (Spec-Bench category names)")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=["static", "retrieval", "adaptive"], choices=list(CONFIGS))
    p.add_argument("--passes", nargs="+", default=["time", "count"], choices=["time", "count"])
    p.add_argument("--no_check", action="store_true", help="skip the greedy identity check against generate()")
    p.add_argument("--top_ops", type=int, default=0, help="also list the N most frequent ops per phase")
    args = p.parse_args()

    target, tokenizer, head = load_models(args)
    prompts = [encode(tokenizer, t) for t in prompts_from(args.questions, args.prompts, args.categories)]
    print(f"# {cpu_model()}; torch {torch.__version__}, {args.threads} thread(s), {args.dtype}; "
          f"{args.target} + {args.head}; {len(prompts)} prompts (lengths {[x.shape[1] for x in prompts]}), "
          f"max_new_tokens {args.max_new_tokens}")
    plain = None
    if not args.no_check:
        with torch.no_grad():
            plain = [target.generate(x, do_sample=False, max_new_tokens=args.max_new_tokens) for x in prompts]
    for name in args.configs:
        config = CONFIGS[name]
        generate(target, head, prompts[0], 16, config)  # warm-up (and the cost model, for adaptive)
        result = profile_config(target, head, prompts, args.max_new_tokens, config, args.passes)
        any_pass = next(iter(result.values()))
        if plain is not None:
            same = [torch.equal(out, ref) for (_, out), ref in zip(any_pass, plain)]
            print(f"\n## {name} {config}: greedy identical to generate(): {same}")
        else:
            print(f"\n## {name} {config}")
        stats_tokens = sum(out.shape[1] - x.shape[1] for (_, out), x in zip(any_pass, prompts))
        rows = {}
        for pass_name, field in (("time", "ms"), ("count", "ops"), ("count", "syncs")):
            if pass_name in result:
                rows[field], rounds = summarise(result[pass_name], field)
        print(f"rounds {rounds}, new tokens {stats_tokens} ({stats_tokens / max(rounds, 1):.2f} per round incl. the "
              "prefill token)\n")
        print("| per round | " + " | ".join(PHASES) + " | total | total excl. forward |")
        print("|---" * (len(PHASES) + 3) + "|")
        for field, label in (("ms", "wall ms"), ("ops", "aten ops"), ("syncs", "host syncs")):
            if field in rows:
                v = rows[field]
                fmt = "{:.2f}" if field == "ms" else "{:.1f}"
                total = sum(v.values())
                print(f"| {label} | " + " | ".join(fmt.format(v[p]) for p in PHASES)
                      + f" | {fmt.format(total)} | {fmt.format(total - v['forward'])} |")
        if "time" in result:
            per_prompt = [summarise([r], "ms")[0] for r in result["time"]]
            spread = [sum(v.values()) - v["forward"] for v in per_prompt]
            print(f"\nnon-forward ms per round by prompt: {', '.join(f'{s:.2f}' for s in spread)}"
                  f" (median {statistics.median(spread):.2f})")
        if "count" in result:
            kinds = Counter()
            for rec, _ in result["count"]:
                for phase, c in rec.sync_names.items():
                    kinds.update({f"{phase}:{k}": n for k, n in c.items()})
            print("sync sites over all rounds: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
            if args.top_ops:
                for phase in PHASES:
                    ops = Counter()
                    for rec, _ in result["count"]:
                        ops.update(rec.op_names[phase])
                    print(f"  top ops {phase}: " + ", ".join(f"{k} {n}" for k, n in ops.most_common(args.top_ops)))


if __name__ == "__main__":
    main()
