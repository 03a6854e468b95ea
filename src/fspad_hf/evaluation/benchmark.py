"""Benchmark: plain generate() vs prompt lookup vs draft heads on Spec-Bench-format questions.

All methods answer the same questions in one run, interleaved question by question (so machine-load
drift hits every method alike), batch size 1, same dtype. Multi-turn questions are asked turn by turn
with the method's own earlier answers in the history, as Spec-Bench does. Per-question records are
appended to `<output>.partial.jsonl` as they finish, so an interrupted run resumes where it stopped.

tau is measured the same way for every method by counting target forwards:
`tau = (new_tokens - 1) / (forwards - 1)` (the prefill and its token excluded; plain decoding = 1.0).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..head.target_parts import decoder_of
from ..decoding.stats import tau
from ..integrity import jsonl_lines

logger = logging.getLogger(__name__)


@dataclass
class Method:
    """One decoding method: a name and the extra generate() kwargs it needs."""

    name: str
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    head: Any = None  # FSPADDraftModel, for per-position acceptance

    def last_stats(self):
        """GenerationStats of this method's last call (the head's, or the head-free route's), or None."""
        if self.head is not None:
            return self.head.last_generation_stats
        decode = self.generate_kwargs.get("custom_generate")
        return getattr(decode, "last_generation_stats", None)


def load_questions(path: str | Path, per_category: int | None = None, categories: list[str] | None = None) -> list[dict]:
    """Spec-Bench question file -> list of {question_id, category, turns}; the first N per category."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Question file not found: {path}. Spec-Bench lives at ../shared/data/spec_bench/question.jsonl.")
    out, seen, line_of = [], defaultdict(int), {}
    for number, line in enumerate(jsonl_lines(path), start=1):
        if not line.strip():
            continue
        q = json.loads(line)
        cat = q.get("category", "all")
        key = (cat, q["question_id"])
        if key in line_of:  # turns are paired by (category, id, turn): an id must be unique in its category
            raise ValueError(
                f"{path}: question_id {q['question_id']} appears twice in category '{cat}' (lines {line_of[key]} and "
                f"{number}). Give every question of a category its own id (e.g. renumber merged sets), or put merged "
                "sets in different categories."
            )
        line_of[key] = number
        if categories and cat not in categories:
            continue
        if per_category is not None and seen[cat] >= per_category:
            continue
        seen[cat] += 1
        out.append({"question_id": q["question_id"], "category": cat, "turns": list(q["turns"])})
    if not out:
        raise ValueError(f"No questions selected from {path} (categories={categories}, per_category={per_category}).")
    return out


class ForwardCounter:
    """Counts forwards of the target's decoder (works for every decoding method)."""

    def __init__(self, target):
        self.count = 0
        self.handle = decoder_of(target).register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


def turn_key(record: dict) -> tuple:
    """(category, question_id, turn): how records of different methods are paired."""
    return record.get("category", "all"), record["question_id"], record["turn"]


def question_key(record: dict) -> tuple:
    return record.get("category", "all"), record["question_id"]


def prompt_ids(tokenizer, history: list[dict], device) -> torch.LongTensor:
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(device)


def run_turn(target, tokenizer, method: Method, history, gen_kwargs, counter: ForwardCounter) -> dict:
    ids = prompt_ids(tokenizer, history, target.device)
    counter.count = 0
    t0 = time.perf_counter()
    out = target.generate(ids, **gen_kwargs, **method.generate_kwargs)
    wall = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    n, forwards = int(new.shape[0]), counter.count
    record = {
        "new_tokens": n,
        "wall_s": wall,
        "forwards": forwards,
        "tau": tau(n, forwards),
        "tokens": new.tolist(),
        "text": tokenizer.decode(new, skip_special_tokens=True),
    }
    stats = method.last_stats()
    if stats is not None:
        record["accepted_from_retrieval"] = sum(stats.accepted_from_retrieval)
        record["accepted_drafts"] = sum(stats.accepted_lengths)
        record["position_accepts"] = stats.position_accepts
        record["position_trials"] = stats.position_trials
        record["draft_s"] = sum(stats.draft_seconds)
        record["verify_s"] = sum(stats.verify_seconds)
        record["tree_nodes"] = sum(stats.tree_sizes)
        if stats.predicted_ms:  # the adaptive policy's predicted round times, next to the measured ones
            record["predicted_s"] = sum(stats.predicted_ms) / 1000
            record["predicted_rounds_s"] = sum(d + v for d, v, _ in zip(stats.draft_seconds, stats.verify_seconds,
                                                                         stats.predicted_ms))
    return record


def _agg(records: list[dict], baseline: dict[tuple, dict] | None, greedy: bool) -> dict:
    tokens = sum(r["new_tokens"] for r in records)
    wall = sum(r["wall_s"] for r in records)
    forwards = sum(r["forwards"] for r in records)
    out = {
        "questions": len({question_key(r) for r in records}),
        "new_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "tau": tau(tokens, forwards, len(records)),
    }
    if baseline is not None:
        base = [baseline[turn_key(r)] for r in records]
        base_tps = sum(b["new_tokens"] for b in base) / sum(b["wall_s"] for b in base)
        out["speedup"] = out["tokens_per_s"] / base_tps if base_tps else 0.0
        out["identical_to_baseline"] = (
            all(r["tokens"] == b["tokens"] for r, b in zip(records, base)) if greedy else None
        )
        out["identical_turns"] = sum(r["tokens"] == b["tokens"] for r, b in zip(records, base)) if greedy else None
    if records and "position_accepts" in records[0]:
        width = max(len(r["position_trials"]) for r in records)
        acc, tri = [0] * width, [0] * width
        for r in records:
            for i, (a, t) in enumerate(zip(r["position_accepts"], r["position_trials"])):
                acc[i] += a
                tri[i] += t
        out["acceptance_per_position"] = [a / t if t else 0.0 for a, t in zip(acc, tri)]
        from_retrieval = sum(r.get("accepted_from_retrieval", 0) for r in records)
        drafts = sum(r.get("accepted_drafts", 0) for r in records)
        out["accepted_from_retrieval_share"] = from_retrieval / drafts if drafts else 0.0  # of accepted drafted tokens
        out["draft_ms_per_round"] = 1000 * sum(r["draft_s"] for r in records) / max(forwards - len(records), 1)
        out["verify_ms_per_round"] = 1000 * sum(r["verify_s"] for r in records) / max(forwards - len(records), 1)
        out["tree_nodes_per_round"] = sum(r.get("tree_nodes", 0) for r in records) / max(forwards - len(records), 1)
        measured = sum(r.get("predicted_rounds_s", 0.0) for r in records)
        if measured:  # (predicted - measured) / measured round time of the adaptive policy's cost model
            out["cost_model_error"] = sum(r.get("predicted_s", 0.0) for r in records) / measured - 1.0
        if baseline is not None:  # METHOD.md 6: SR <= tau * t(1) / (t(verify) + t(draft)), t(1) from the baseline
            t1 = 1000 * sum(b["wall_s"] for b in base) / max(sum(b["forwards"] for b in base), 1)
            out["baseline_ms_per_forward"] = t1
            out["speedup_bound"] = out["tau"] * t1 / max(out["draft_ms_per_round"] + out["verify_ms_per_round"], 1e-9)
    return out


def summarize(records: list[dict], method_names: list[str], greedy: bool) -> dict:
    """Build the documented JSON layout: methods -> {overall, per_category}."""
    by_method = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    base_name = method_names[0]
    baseline = {turn_key(r): r for r in by_method[base_name]}
    result = {}
    for name in method_names:
        recs = by_method[name]
        if not recs:
            continue
        cats = defaultdict(list)
        for r in recs:
            cats[r["category"]].append(r)
        result[name] = {
            "overall": _agg(recs, baseline, greedy),
            "per_category": {c: _agg(rs, baseline, greedy) for c, rs in sorted(cats.items())},
        }
    return result


def first_divergences(target, tokenizer, records: list[dict], questions: list[dict], method_names: list[str]) -> dict:
    """Where each greedy method first leaves the baseline, and how close the target's choice was there.

    For every question whose answers differ, take the first differing turn (earlier turns are equal,
    so the history is the baseline's) and the first differing token. Re-run the target on that prefix
    in one full forward (a third rounding path, neither the baseline's nor the method's) and report its
    top-2 logit gap, the ranks of the baseline's and the method's tokens (0 = its argmax) and the logit
    gap between those two tokens. A rounding near-tie shows as both tokens in the re-run's top 2 with a
    pair gap of a few bf16 ulps; either may be the argmax. In float32 any divergence is a bug. Returns
    ``{method: {"turns": n, "max_top2_gap": g, "max_pair_gap": p, "both_in_top2": bool, "cases": [...]}}``.
    """
    turns_of = {question_key(q): q["turns"] for q in questions}
    by_key = {(r["method"], *turn_key(r)): r for r in records}
    base = method_names[0]
    out = {}
    for name in method_names[1:]:
        cases = []
        for (cat, qid), turns in turns_of.items():
            history = []
            for i, turn in enumerate(turns):
                b, r = by_key.get((base, cat, qid, i)), by_key.get((name, cat, qid, i))
                if b is None or r is None:
                    break
                history.append({"role": "user", "content": turn})
                if r["tokens"] != b["tokens"]:
                    cases.append({"category": cat, **divergence_case(target, tokenizer, history, b["tokens"], r["tokens"], qid, i)})
                    break
                history.append({"role": "assistant", "content": b["text"]})
        measured = [c for c in cases if c["top2_gap"] is not None]  # not: one output a prefix of the other
        out[name] = {"turns": len(cases),
                     "max_top2_gap": max((c["top2_gap"] for c in measured), default=None),
                     "max_pair_gap": max((c["pair_gap"] for c in measured), default=None),
                     "both_in_top2": all(max(c["baseline_token_rank"], c["method_token_rank"]) <= 1 for c in measured),
                     "cases": cases}
    return out


def divergence_case(target, tokenizer, history, base_tokens, method_tokens, qid, turn) -> dict:
    pos = next((i for i, (a, b) in enumerate(zip(base_tokens, method_tokens)) if a != b),
               min(len(base_tokens), len(method_tokens)))
    case = {"question_id": qid, "turn": turn, "position": pos, "top2_gap": None, "pair_gap": None,
            "baseline_token_rank": None, "method_token_rank": None}
    if pos >= min(len(base_tokens), len(method_tokens)):  # one output is a prefix of the other (stopped early)
        return case
    ids = prompt_ids(tokenizer, history, target.device)
    ids = torch.cat([ids, torch.tensor([base_tokens[:pos]], dtype=ids.dtype, device=ids.device)], dim=1)  # [1, P + pos]
    with torch.no_grad():
        logits = target(ids, logits_to_keep=1).logits[0, -1].float()  # [V]
    top2 = logits.topk(2).values
    case["top2_gap"] = float(top2[0] - top2[1])
    base_logit, method_logit = logits[base_tokens[pos]], logits[method_tokens[pos]]
    case["pair_gap"] = float((base_logit - method_logit).abs())
    case["baseline_token_rank"] = int((logits > base_logit).sum())  # 0 = the re-run's argmax (ties share a rank)
    case["method_token_rank"] = int((logits > method_logit).sum())
    return case


def _load_partial(path: Path, turns_of: dict) -> list[dict]:
    """Records of questions recorded *whole* (all turns); cut lines and half-recorded questions are
    dropped from the file (a kill can land between two turns' lines), so those questions are redone."""
    if not path.is_file():
        return []
    records = []
    lines = jsonl_lines(path)
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    counts = defaultdict(int)
    for r in records:
        counts[(r["method"], *question_key(r))] += 1
    whole = [r for r in records if counts[(r["method"], *question_key(r))] == turns_of.get(question_key(r))]
    if len(whole) != len(records) or len(records) != len(lines):
        logger.warning("%s: dropping %d records of half-recorded questions; they are redone", path,
                       len(records) - len(whole))
        path.write_text("".join(json.dumps(r) + "\n" for r in whole), encoding="utf-8")
    return whole


def run_benchmark(target, tokenizer, methods: list[Method], questions: list[dict], output: str | Path,
                  max_new_tokens: int = 256, temperature: float = 0.0, config: dict | None = None) -> dict:
    """Run every method on every question (interleaved), write JSON + partial JSONL; return the summary."""
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial.jsonl")
    records = _load_partial(partial, {question_key(q): len(q["turns"]) for q in questions})
    done = {(r["method"], *question_key(r)) for r in records}
    greedy = temperature == 0.0
    gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": not greedy}
    if not greedy:
        gen_kwargs.update(temperature=temperature, top_p=1.0, top_k=None)
    counter = ForwardCounter(target)
    try:
        warm = [{"role": "user", "content": "Say hello."}]
        for m in methods:  # warm-up: first calls pay one-off allocation and kernel selection costs
            run_turn(target, tokenizer, m, warm, {**gen_kwargs, "max_new_tokens": 16}, counter)
        with partial.open("a", encoding="utf-8") as sink:
            for q in tqdm(questions, desc="questions"):
                for m in methods:
                    if (m.name, *question_key(q)) in done:
                        continue
                    history, turns = [], []
                    for i, turn in enumerate(q["turns"]):
                        history.append({"role": "user", "content": turn})
                        rec = run_turn(target, tokenizer, m, history, gen_kwargs, counter)
                        history.append({"role": "assistant", "content": rec["text"]})
                        turns.append({**rec, "method": m.name, "question_id": q["question_id"],
                                      "category": q["category"], "turn": i})
                    for rec in turns:  # a question is recorded whole, so resuming never splits one
                        sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                    records.extend(turns)
    finally:
        counter.close()
    summary = {
        "config": {**(config or {}), "max_new_tokens": max_new_tokens, "temperature": temperature,
                   "questions": len(questions), "machine": platform.platform(), "torch": torch.__version__,
                   "threads": torch.get_num_threads()},
        "methods": summarize(records, [m.name for m in methods], greedy),
    }
    if greedy and len(methods) > 1:
        for name, report in first_divergences(target, tokenizer, records, questions, [m.name for m in methods]).items():
            summary["methods"][name]["divergences"] = report
    output.write_text(json.dumps(summary, indent=2))
    (output.with_suffix(".md")).write_text(markdown_table(summary))
    return summary


def identical_cell(stats: dict) -> str:
    """Table cell for greedy identity with the baseline (benchmark tables and model cards)."""
    ident = stats.get("identical_to_baseline")
    if ident is None:
        return "n/a"
    return "yes" if ident else f"no ({stats.get('identical_turns', '?')} turns identical)"


def markdown_table(summary: dict) -> str:
    """Overall table (tau, speed-up, its bound tau * t(1) / (t(draft) + t(verify)), costs, tokens/s,
    identity), per-category speed-ups, and where greedy outputs first diverge."""
    methods = summary["methods"]
    header = ("| method | tau | speed-up | bound | draft / verify ms per round | nodes per round | cost model error "
              "| tokens/s | identical |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        o = m["overall"]
        ident_s = identical_cell(o)
        bound = f"{o['speedup_bound']:.2f}x" if "speedup_bound" in o else "-"
        cost = f"{o['draft_ms_per_round']:.0f} / {o['verify_ms_per_round']:.0f}" if "draft_ms_per_round" in o else "-"
        nodes = f"{o['tree_nodes_per_round']:.1f}" if "tree_nodes_per_round" in o else "-"
        error = f"{100 * o['cost_model_error']:+.0f}%" if "cost_model_error" in o else "-"
        lines.append(f"| {name} | {o['tau']:.2f} | {o.get('speedup', 1.0):.2f}x | {bound} | {cost} | {nodes} | {error} | "
                     f"{o['tokens_per_s']:.1f} | {ident_s} |")
    cats = sorted({c for m in methods.values() for c in m["per_category"]})
    lines += ["", "Speed-up (tau) per category:", "", "| category | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for c in cats:
        cells = []
        for m in methods.values():
            pc = m["per_category"].get(c)
            cells.append(f"{pc.get('speedup', 1.0):.2f}x ({pc['tau']:.2f})" if pc else "-")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    diverged = {name: m["divergences"] for name, m in methods.items() if m.get("divergences", {}).get("turns")}
    if diverged:
        lines += ["", "First divergence from the baseline (target re-run on the shared prefix: its top-2 logit gap, "
                  "and whether the baseline's and the method's tokens are its top two):", ""]
        for name, d in diverged.items():
            if d.get("max_top2_gap") is None:
                lines.append(f"- {name}: {d['turns']} questions, outputs differ only in length")
                continue
            lines.append(f"- {name}: {d['turns']} questions, max top-2 gap {d['max_top2_gap']:.3f}, max gap between "
                         f"the two tokens {d['max_pair_gap']:.3f}, "
                         f"{'both tokens in the top 2 every time' if d['both_in_top2'] else 'NOT always the top 2'}")
    tables = summary.get("config", {}).get("cost_tables")
    if tables:
        lines += ["", "Cost tables of this machine (what the adaptive policy priced trees with; `fspad-hf calibrate`):",
                  "", tables]
    return "\n".join(lines) + "\n"


def plot(summary: dict, out_dir: str | Path) -> list[Path]:
    """Speed-up per category and acceptance per draft position (needs matplotlib: `pip install fspad-hf[plots]`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    methods = summary["methods"]
    cats = sorted({c for m in methods.values() for c in m["per_category"]})
    fig, ax = plt.subplots(figsize=(max(6, len(cats) * 0.9), 4))
    width = 0.8 / max(len(methods), 1)
    for i, (name, m) in enumerate(methods.items()):
        vals = [m["per_category"].get(c, {}).get("speedup", 0.0) for c in cats]
        ax.bar([x + i * width for x in range(len(cats))], vals, width, label=name)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(cats))], cats, rotation=30, ha="right")
    ax.set_ylabel("speed-up vs plain generate()")
    ax.legend()
    fig.tight_layout()
    paths = [out_dir / "speedup_per_category.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in methods.items():
        acc = m["overall"].get("acceptance_per_position")
        if acc:
            ax.plot(range(1, len(acc) + 1), acc, marker="o", label=name)
    width = max((len(m["overall"].get("acceptance_per_position") or []) for m in methods.values()), default=0)
    ax.set_xticks(range(1, width + 1))
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "acceptance_per_position.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


__all__ = ["Method", "first_divergences", "load_questions", "run_benchmark", "summarize", "markdown_table", "plot", "ForwardCounter"]
