"""Benchmark runner: JSON layout, identity check, tau accounting, resume."""

import json

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.evaluation.benchmark import Method, first_divergences, load_questions, markdown_table, prompt_ids, run_benchmark
from tests.conftest import make_target, tiny_chat_tokenizer


def _questions(tmp_path):
    rows = [
        {"question_id": 1, "category": "writing", "turns": ["the fox", "and the dog?"]},
        {"question_id": 2, "category": "writing", "turns": ["quick"]},
        {"question_id": 3, "category": "qa", "turns": ["lazy dog"]},
        {"question_id": 4, "category": "qa", "turns": ["brown"]},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_benchmark_layout_identity_and_resume(tmp_path):
    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=50, vocab_size=len(tok))
    target.generation_config.eos_token_id = None
    head = FSPADDraftModel.from_target(target, tree_total_tokens=8, tree_depth=3, tree_top_k=3)
    qs = load_questions(_questions(tmp_path), per_category=1)
    assert [q["question_id"] for q in qs] == [1, 3]
    qs = load_questions(_questions(tmp_path))
    methods = [Method("baseline"), Method("pld", {"prompt_lookup_num_tokens": 3}), Method("fspad", {"assistant_model": head}, head)]
    out = tmp_path / "res" / "results.json"
    summary = run_benchmark(target, tok, methods, qs, out, max_new_tokens=12)
    saved = json.loads(out.read_text())
    assert set(saved["methods"]) == {"baseline", "pld", "fspad"}
    for name, m in saved["methods"].items():
        for part in [m["overall"], *m["per_category"].values()]:
            assert {"tau", "speedup", "tokens_per_s", "identical_to_baseline"} <= set(part)
            assert part["identical_to_baseline"] is True, name
        assert set(m["per_category"]) == {"writing", "qa"}
    assert saved["methods"]["baseline"]["overall"]["tau"] == 1.0
    assert saved["methods"]["baseline"]["overall"]["speedup"] == 1.0
    assert "acceptance_per_position" in saved["methods"]["fspad"]["overall"]
    assert saved["methods"]["fspad"]["divergences"]["turns"] == 0  # fp32: no divergence to explain
    f = saved["methods"]["fspad"]["overall"]
    assert f["speedup_bound"] == pytest.approx(
        f["tau"] * f["baseline_ms_per_forward"] / (f["draft_ms_per_round"] + f["verify_ms_per_round"]))
    assert (out.with_suffix(".md")).read_text().startswith("| method |")
    partial = out.with_suffix(".partial.jsonl")
    lines = partial.read_text().splitlines()
    assert len(lines) == 3 * 5  # 3 methods x (2 + 1 + 1 + 1) turns
    # resume: keep the first question's records (+ a line cut by a kill); only the rest is recomputed
    partial.write_text("\n".join(lines[:6]) + '\n{"method": "fspad", "quest')
    calls = []
    original = target.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    target.generate = counting
    again = run_benchmark(target, tok, methods, qs, out, max_new_tokens=12)
    assert len(calls) == 3 + 3 * 3  # warm-ups + 3 methods x 3 remaining single-turn questions
    assert again["methods"]["fspad"]["overall"]["new_tokens"] == summary["methods"]["fspad"]["overall"]["new_tokens"]
    assert "| fspad |" in markdown_table(again)
    # the cut line was dropped from the file, so a later resume still sees every record
    assert all(json.loads(line) for line in partial.read_text().splitlines())
    assert len(partial.read_text().splitlines()) == 15


def test_plots_are_written(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    from fspad_hf.evaluation.benchmark import plot

    summary = {"methods": {
        "baseline": {"overall": {"tau": 1.0}, "per_category": {"qa": {"speedup": 1.0, "tau": 1.0}}},
        "fspad": {"overall": {"tau": 2.0, "acceptance_per_position": [0.7, 0.5, 0.3]},
                  "per_category": {"qa": {"speedup": 1.5, "tau": 2.0}}},
    }}
    paths = plot(summary, tmp_path)
    assert [p.name for p in paths] == ["speedup_per_category.png", "acceptance_per_position.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_first_divergences_locate_the_token_and_measure_the_targets_margin():
    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=51, vocab_size=len(tok))
    questions = [{"question_id": 1, "turns": ["the fox"]}, {"question_id": 2, "turns": ["quick", "and the dog?"]},
                 {"question_id": 3, "turns": ["lazy dog"]}]
    base = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14, 15, 16]]
    records = [{"method": "baseline", "question_id": q, "turn": t, "tokens": toks, "text": tok.decode(toks)}
               for (q, t), toks in zip([(1, 0), (2, 0), (2, 1), (3, 0)], base)]
    other = [[5, 6, 20, 21], [9, 10], [11, 22, 23], [14, 15, 16]]  # q1 turn 0 at 2; q2 turn 1 at 1; q3 equal
    records += [{**r, "method": "m", "tokens": toks} for r, toks in zip(records[:4], other)]
    report = first_divergences(target, tok, records, questions, ["baseline", "m"])["m"]
    assert report["turns"] == 2
    cases = {c["question_id"]: c for c in report["cases"]}
    assert (cases[1]["turn"], cases[1]["position"]) == (0, 2) and (cases[2]["turn"], cases[2]["position"]) == (1, 1)
    # independent recomputation for question 2, turn 1: history holds the baseline's first answer
    history = [{"role": "user", "content": "quick"}, {"role": "assistant", "content": tok.decode([9, 10])},
               {"role": "user", "content": "and the dog?"}]
    ids = torch.cat([prompt_ids(tok, history, "cpu"), torch.tensor([[11]])], dim=1)
    with torch.no_grad():
        logits = target(ids).logits[0, -1]
    top2 = logits.topk(2).values
    assert abs(cases[2]["top2_gap"] - float(top2[0] - top2[1])) < 1e-4
    assert cases[2]["method_token_rank"] == int((logits > logits[22]).sum())
    assert cases[2]["baseline_token_rank"] == int((logits > logits[12]).sum())
    assert abs(cases[2]["pair_gap"] - float((logits[12] - logits[22]).abs())) < 1e-4
    assert report["max_top2_gap"] == max(c["top2_gap"] for c in report["cases"])
    assert report["max_pair_gap"] == max(c["pair_gap"] for c in report["cases"])
    ranks = [max(c["baseline_token_rank"], c["method_token_rank"]) for c in report["cases"]]
    assert report["both_in_top2"] == all(r <= 1 for r in ranks)
    assert "gap between the two tokens" in markdown_table(
        {"config": {}, "methods": {"baseline": {"overall": {"tau": 1.0, "speedup": 1.0, "tokens_per_s": 1.0},
                                                "per_category": {}},
                                   "m": {"overall": {"tau": 1.0, "speedup": 1.0, "tokens_per_s": 1.0},
                                         "per_category": {}, "divergences": report}}})


def test_merged_sets_numbered_from_zero_pair_by_category(tmp_path):
    """Sets merged with ids 0.. in each category: every turn must compare with its own baseline.

    Paired by question id alone, the 'writing' turns of id 0 met the 'math' baseline of id 0 and a
    lossless method looked non-identical (and per-category speed-ups used other questions' times).
    """
    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=51, vocab_size=len(tok))
    target.generation_config.eos_token_id = None
    head = FSPADDraftModel.from_target(target, tree_total_tokens=8, tree_depth=3, tree_top_k=3)
    rows = [{"question_id": i, "category": cat, "turns": [f"{cat} {word}"]}
            for cat in ("writing", "math", "code") for i, word in enumerate(["the fox", "lazy dog"])]
    path = tmp_path / "merged.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    methods = [Method("baseline"), Method("fspad", {"assistant_model": head}, head)]
    summary = run_benchmark(target, tok, methods, load_questions(path), tmp_path / "r.json", max_new_tokens=10)
    fspad = summary["methods"]["fspad"]
    assert fspad["overall"]["identical_turns"] == 6 and fspad["overall"]["questions"] == 6
    assert all(c["identical_to_baseline"] for c in fspad["per_category"].values())


def test_duplicate_question_id_in_a_category_is_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps({"question_id": 7, "category": "qa", "turns": [t]}) for t in ("a", "b")))
    with pytest.raises(ValueError, match="question_id 7 appears twice in category 'qa' \\(lines 1 and 2\\)"):
        load_questions(path)


def test_bench_suffixes_and_head_free_retrieval(tmp_path):
    """`@T,D,K+retrievalN` and the head-free `retrieval` method run and stay identical to the baseline."""
    from fspad_hf.decoding.generation import tree_generate
    from fspad_hf.decoding.settings import TreeSettings

    shape = {"tree_total_tokens": 8, "tree_depth": 3, "tree_top_k": 4}
    # @T,D,K: the static tree without retrieval (not the head's adaptive + retrieval defaults) ...
    assert TreeSettings.parse_suffix("h@8,3,4") == ("h", {**shape, "tree_policy": "static", "retrieval_branches": 0})
    # ... unless the suffix asks for them
    assert TreeSettings.parse_suffix("h@8,3,4+retrieval2") == (
        "h", {**shape, "tree_policy": "static", "retrieval_branches": 2})
    assert TreeSettings.parse_suffix("h@8,3,4+adaptive") == (
        "h", {**shape, "tree_policy": "adaptive", "retrieval_branches": 0})
    assert TreeSettings.parse_suffix("h") == ("h", {})  # the head's defaults
    assert TreeSettings.parse_suffix("h+retrieval") == ("h", {"retrieval_branches": 4})
    assert TreeSettings.parse_suffix("h+retrieval2+adaptive") == ("h", {"retrieval_branches": 2, "tree_policy": "adaptive"})
    with pytest.raises(ValueError, match="unknown suffix"):
        TreeSettings.parse_suffix("h+retrievalx")
    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=52, vocab_size=len(tok))
    target.generation_config.eos_token_id = None
    head = FSPADDraftModel.from_target(target, tree_total_tokens=8, tree_depth=3, tree_top_k=3)
    methods = [Method("baseline"), Method("merged", {"assistant_model": head, "retrieval_branches": 2}, head),
               Method("retrieval", {"custom_generate": tree_generate, "retrieval_branches": 2})]
    summary = run_benchmark(target, tok, methods, load_questions(_questions(tmp_path)), tmp_path / "r.json",
                            max_new_tokens=24)
    for name in ("merged", "retrieval"):
        overall = summary["methods"][name]["overall"]
        assert overall["identical_to_baseline"] is True, name
        assert 0.0 <= overall["accepted_from_retrieval_share"] <= 1.0


def test_jsonl_with_unicode_line_separators_inside_text(tmp_path):
    """JSON allows U+2028 unescaped in strings; str.splitlines would cut such a record in two."""
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": 1, "category": "qa", "turns": ["first line\u2028second line"]},
            {"question_id": 2, "category": "qa", "turns": ["x\u2029y\x1cz"]}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert [q["turns"][0] for q in load_questions(path)] == ["first line\u2028second line", "x\u2029y\x1cz"]
