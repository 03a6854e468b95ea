"""`evaluate` metrics of fspad-hf, usable offline from the installed package.

    import evaluate
    from fspad_hf.evaluation.metrics import load_records, metric_path, records_to_inputs

    metric = evaluate.load(str(metric_path()))                   # the folder holds fspad_speculative.py
    records = load_records("benchmarks/results/results.partial.jsonl")
    print(metric.compute(**records_to_inputs(records, method="fspad")))   # tau, speedup, exact_match, ...
"""

from __future__ import annotations

import json
from pathlib import Path

from ...integrity import jsonl_lines

METRICS_DIR = Path(__file__).parent
INPUT_COLUMNS = ("predictions", "references", "forwards", "wall_s", "reference_wall_s")


def metric_path(name: str = "fspad_speculative") -> Path:
    """Folder of the `evaluate` module `name` (pass `str(metric_path())` to `evaluate.load`)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"No metric '{name}' in {METRICS_DIR} (available: fspad_speculative).")
    return path


def load_metric(name: str = "fspad_speculative", **kwargs):
    """`evaluate.load` of a packaged metric (local files only: no Hub access)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


def load_records(path: str | Path) -> list[dict]:
    """Per-turn records of a benchmark run (`<output>.partial.jsonl`), skipping blank or truncated lines."""
    records = []
    for line in jsonl_lines(path):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill is always the last one
    return records


def records_to_inputs(records: list[dict], method: str, baseline: str = "baseline") -> dict[str, list]:
    """Metric columns for `method`: each of its turns paired with the `baseline` turn of the same question.

    records: dicts with `method`, `question_id`, `turn`, `tokens`, `forwards`, `wall_s` (as written by
    `fspad_hf.evaluation.benchmark.run_benchmark`).
    """
    base = {(r.get("category"), r["question_id"], r.get("turn", 0)): r for r in records if r["method"] == baseline}
    rows = [r for r in records if r["method"] == method]
    if not rows:
        raise ValueError(f"No records for method '{method}' (methods: {sorted({r['method'] for r in records})}).")
    columns: dict[str, list] = {c: [] for c in INPUT_COLUMNS}
    for r in rows:
        key = (r.get("category"), r["question_id"], r.get("turn", 0))
        if key not in base:
            raise KeyError(f"No '{baseline}' record for question {key[1]} (category {key[0]}) turn {key[2]}: run the baseline too.")
        b = base[key]
        columns["predictions"].append(list(r["tokens"]))
        columns["references"].append(list(b["tokens"]))
        columns["forwards"].append(r.get("forwards"))
        columns["wall_s"].append(r.get("wall_s"))
        columns["reference_wall_s"].append(b.get("wall_s"))
    return columns


__all__ = ["metric_path", "load_metric", "load_records", "records_to_inputs", "INPUT_COLUMNS", "METRICS_DIR"]
