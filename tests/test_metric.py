"""The packaged `evaluate` metric fspad_speculative: offline loading, known answers, benchmark agreement."""

import json
import os

# evaluate reads these at import time: a local metric must never reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import evaluate  # noqa: E402
import pytest  # noqa: E402

from fspad_hf.evaluation.benchmark import summarize  # noqa: E402
from fspad_hf.evaluation.metrics import load_metric, load_records, metric_path, records_to_inputs  # noqa: E402

ROWS = dict(  # two turns with hand-computed answers
    predictions=[[1, 2, 3, 4, 5], [7, 8, 9]],
    references=[[1, 2, 3, 4, 5], [7, 8, 0]],
    forwards=[3, 2],
    wall_s=[0.5, 0.25],
    reference_wall_s=[1.0, 0.5],
)


@pytest.fixture(scope="module")
def metric():
    return load_metric(keep_in_memory=True)


def test_metric_path_and_offline_load():
    path = metric_path()
    assert (path / "fspad_speculative.py").is_file() and (path / "README.md").is_file()
    by_file = evaluate.load(str(path / "fspad_speculative.py"), keep_in_memory=True)
    assert by_file.compute(**ROWS)["tau"] == pytest.approx(2.0)
    with pytest.raises(FileNotFoundError):
        metric_path("no_such_metric")


def test_known_answers(metric):
    out = metric.compute(**ROWS)
    assert out["num_turns"] == 2 and out["new_tokens"] == 8
    assert out["tau"] == pytest.approx((8 - 2) / (5 - 2))
    assert out["tokens_per_s"] == pytest.approx(8 / 0.75)
    assert out["reference_tokens_per_s"] == pytest.approx(8 / 1.5)
    assert out["speedup"] == pytest.approx(2.0)
    assert out["exact_match"] == pytest.approx(0.5)
    assert out["prefix_match"] == pytest.approx((1 + 2 / 3) / 2)


def test_plain_decoding_and_missing_timings(metric):
    plain = metric.compute(predictions=[[4, 5, 6]], references=[[4, 5, 6]], forwards=[3], wall_s=[None],
                           reference_wall_s=[None])
    assert plain["tau"] == pytest.approx(1.0) and plain["exact_match"] == 1.0
    assert plain["speedup"] is None and plain["tokens_per_s"] is None
    unknown = metric.compute(predictions=[[4]], references=[[4, 5]], forwards=[None], wall_s=[1.0], reference_wall_s=[1.0])
    assert unknown["tau"] is None and unknown["speedup"] == pytest.approx(0.5) and unknown["prefix_match"] == 0.5


def test_incremental_batches(metric):
    for i in range(2):
        metric.add_batch(**{k: v[i:i + 1] for k, v in ROWS.items()})
    assert metric.compute()["tau"] == pytest.approx(2.0)


def records():
    """Per-turn records as `run_benchmark` writes them (two questions, one with two turns)."""
    out = []
    spec = {  # method -> per (qid, turn): (tokens, forwards, wall)
        "baseline": {(1, 0): ([1, 2, 3, 4], 4, 1.0), (1, 1): ([5, 6], 2, 0.5), (2, 0): ([9, 9, 9], 3, 0.8)},
        "fspad": {(1, 0): ([1, 2, 3, 4], 2, 0.4), (1, 1): ([5, 7], 2, 0.3), (2, 0): ([9, 9, 9], 2, 0.3)},
    }
    for method, turns in spec.items():
        for (qid, turn), (tokens, forwards, wall) in turns.items():
            out.append({"method": method, "question_id": qid, "turn": turn, "category": "qa", "tokens": tokens,
                        "new_tokens": len(tokens), "forwards": forwards, "wall_s": wall})
    return out


def test_agrees_with_the_benchmark_summary(metric):
    recs = records()
    inputs = records_to_inputs(recs, "fspad")
    assert inputs["references"] == [[1, 2, 3, 4], [5, 6], [9, 9, 9]]
    out = metric.compute(**inputs)
    overall = summarize(recs, ["baseline", "fspad"], greedy=True)["fspad"]["overall"]
    assert out["tau"] == pytest.approx(overall["tau"]) == pytest.approx((9 - 3) / (6 - 3))
    assert out["speedup"] == pytest.approx(overall["speedup"])
    assert out["exact_match"] == pytest.approx(overall["identical_turns"] / 3)
    assert metric.compute(**records_to_inputs(recs, "baseline"))["tau"] == pytest.approx(1.0)


def test_records_helpers(tmp_path):
    recs = records()
    with pytest.raises(ValueError, match="No records for method"):
        records_to_inputs(recs, "eagle")
    with pytest.raises(KeyError, match="question 2"):
        records_to_inputs([r for r in recs if not (r["method"] == "baseline" and r["question_id"] == 2)], "fspad")
    path = tmp_path / "results.partial.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"method": "fsp')  # a line cut by a kill
    assert load_records(path) == recs
