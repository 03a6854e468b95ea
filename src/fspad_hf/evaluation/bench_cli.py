"""`fspad-hf bench`: plain generate(), prompt lookup, draft heads and head-free retrieval on the same questions.

The command's parser, the `--head NAME=PATH[@T,D,K]` specs and the cost tables the adaptive methods price
with; the benchmark itself is `evaluation/benchmark.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..cli import TargetArguments, _load_target

logger = logging.getLogger("fspad_hf")


def _bench_parser():
    import argparse

    p = argparse.ArgumentParser(prog="fspad-hf bench", description="Plain generate() vs prompt lookup vs draft heads, one run.")
    p.add_argument("--target", default="smollm2", help="smollm2, qwen-coder-0.5b, gemma3-270m, or a model path")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of every method")
    p.add_argument("--head", action="append", default=[], metavar="[NAME=]PATH",
                   help="a draft head (repeat for several); NAME defaults to the folder name; 'shipped' = bundled heads. "
                        "Without a suffix the head runs with its defaults (the adaptive policy with retrieval branches); "
                        "an @T,D,K suffix runs the static tree T,D,K (total tokens, depth, top-k) without retrieval, "
                        "+retrieval[N] merges N retrieved continuations into it and +adaptive turns the policy on, "
                        "so one head can run under several settings in one run")
    p.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl", help="Spec-Bench-format JSONL")
    p.add_argument("--per_category", type=int, default=None, help="first N questions of each category")
    p.add_argument("--categories", default=None, help="comma-separated categories to keep")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (identity to the baseline is checked)")
    p.add_argument("--pld_tokens", type=int, default=10, help="prompt lookup candidates per step (0 = skip PLD)")
    p.add_argument("--retrieval", type=int, default=0, metavar="N",
                   help="add the head-free method 'retrieval' (N retrieved continuations per tree; 0 = skip)")
    p.add_argument("--tree_total_tokens", type=int, default=None)
    p.add_argument("--tree_depth", type=int, default=None)
    p.add_argument("--tree_top_k", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores free of other work now)")
    p.add_argument("--output", default="benchmarks/results/results.json", help="JSON path; .md table and plots beside it")
    p.add_argument("--no_plots", action="store_true")
    return p


def _heads(specs: list[str], target, tokenizer, dtype) -> dict[str, tuple]:
    """`[NAME=]PATH[@T,D,K]` specs -> {name: (bound head, per-head tree kwargs)}; a path is loaded once."""
    from ..decoding.settings import TreeSettings
    from ..head.modeling import FSPADDraftModel
    from ..head.shipped import shipped_heads

    wanted = {}
    for spec in specs:
        if spec == "shipped":
            wanted.update({name: (path, {}) for name, path in shipped_heads(target).items()})
            continue
        name, _, rest = spec.rpartition("=")
        try:
            path, tree = TreeSettings.parse_suffix(rest)
        except ValueError as error:
            raise SystemExit(f"--head {error}") from error
        wanted[name or Path(path).name + (rest[len(path):] if tree else "")] = (path, tree)
    loaded, by_path = {}, {}
    for name, (path, tree) in wanted.items():
        if path not in by_path:
            head = FSPADDraftModel.from_pretrained(path).to(device=target.device, dtype=dtype)
            head.bind_target(target, tokenizer)
            by_path[path] = head
        loaded[name] = (by_path[path], tree)
    return loaded


def _bench_cost_tables(target, methods) -> str | None:
    """Calibrate (or load) the cost tables the adaptive methods will use, before anything is timed; their
    Markdown goes into the results (None when no method is adaptive)."""
    from ..decoding.cost_model import CostModel
    from ..decoding.settings import ALL_KEYWORDS, TreeSettings

    tables = {}
    for m in methods:
        head = m.generate_kwargs.get("assistant_model")
        if head is None and m.generate_kwargs.get("custom_generate") is None:
            continue  # plain generate() or prompt lookup
        chosen = {kw: v for kw, v in m.generate_kwargs.items() if kw in ALL_KEYWORDS}
        if TreeSettings.resolve(head.config if head is not None else None, **chosen).policy != "adaptive":
            continue
        key = id(head)
        if key not in tables:
            tables[key] = CostModel.for_target(target, head).to_markdown()
    return "\n\n".join(tables.values()) if tables else None


def cmd_bench(argv: list[str]) -> None:
    """Benchmark methods on Spec-Bench questions; writes JSON, a Markdown table and plots."""
    from ..decoding.settings import KEYWORDS
    from .benchmark import Method, load_questions, plot, run_benchmark

    from ..machine import default_threads

    a = _bench_parser().parse_args(argv)
    torch.set_num_threads(a.threads or default_threads())
    target, tokenizer = _load_target(TargetArguments(a.target, a.dtype))
    questions = load_questions(a.questions, a.per_category, a.categories.split(",") if a.categories else None)
    tree = {kw: v for kw in KEYWORDS if (v := getattr(a, kw)) is not None}
    methods = [Method("baseline")]
    if a.pld_tokens:
        methods.append(Method(f"pld-{a.pld_tokens}", {"prompt_lookup_num_tokens": a.pld_tokens}))
    for name, (head, own_tree) in _heads(a.head, target, tokenizer, getattr(torch, a.dtype)).items():
        methods.append(Method(name, {"assistant_model": head, **tree, **own_tree}, head))
    if a.retrieval:  # head-free: retrieval-only trees through the patch-free route
        from ..decoding.generation import tree_generate

        methods.append(Method("retrieval", {"custom_generate": tree_generate, "retrieval_branches": a.retrieval}))
    config = {"target": a.target, "dtype": a.dtype, "question_file": a.questions, "per_category": a.per_category,
              "heads": a.head, "tree": tree, "threads": torch.get_num_threads(),
              "cost_tables": _bench_cost_tables(target, methods)}
    summary = run_benchmark(target, tokenizer, methods, questions, a.output, a.max_new_tokens, a.temperature, config)
    if not a.no_plots:
        try:
            plot(summary, Path(a.output).parent)
        except ImportError:
            logger.warning("matplotlib is not installed: no plots (pip install 'fspad-hf[plots]').")
    print(Path(a.output).with_suffix(".md").read_text())
