"""CostModel: calibration on tiny random models, interpolation, the on-disk cache, bad input (no timing thresholds)."""

import json
import math

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.decoding import cost_model
from fspad_hf.decoding.cost_model import MAX_K, CostModel, CostTable
from tests.conftest import make_target, tiny_chat_tokenizer

CHEAP = {"contexts": (16, 64), "reps": 1, "min_reps": 1}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPAD_HF_CACHE", str(tmp_path))
    return tmp_path / "costs"


@pytest.fixture
def counting(monkeypatch):
    """Count calls of the two measuring functions (they still measure)."""
    calls = {"verify": 0, "draft": 0}
    real_verify, real_draft = cost_model.measure_verify, cost_model.measure_draft

    def verify(*args, **kwargs):
        calls["verify"] += 1
        return real_verify(*args, **kwargs)

    def draft(*args, **kwargs):
        calls["draft"] += 1
        return real_draft(*args, **kwargs)

    monkeypatch.setattr(cost_model, "measure_verify", verify)
    monkeypatch.setattr(cost_model, "measure_draft", draft)
    return calls


def _table(kind="verify", grid=(1, 2, 4, 8, 64), contexts=(100, 300), ms=None):
    ms = ms or [[10.0, 20.0, 16.0, 24.0, 88.0], [14.0, 30.0, 20.0, 32.0, 120.0]]
    return CostTable(kind, list(grid), list(contexts), ms, {"kind": kind}, 0.0, 3, 1.0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_calibration_gives_positive_finite_costs_for_every_k(arch):
    target = make_target(arch)
    head = FSPADDraftModel.from_target(target, num_draft_layers=2, draft_vocab_size=48)
    verify = cost_model.measure_verify(target, **CHEAP)
    draft = cost_model.measure_draft(head, target, **CHEAP)
    assert verify.grid == list(cost_model.DEFAULT_KS) and verify.contexts == [16, 64]
    model = CostModel(verify, draft)
    for context in (0, 16, 40, 64, 500):
        curve = model.verify_curve(context)
        assert curve.shape == (MAX_K,)
        assert bool(torch.isfinite(curve).all()) and bool((curve > 0).all())
        for k in range(1, MAX_K + 1):
            assert math.isfinite(model.verify_ms(k, context)) and model.verify_ms(k, context) > 0
            assert math.isfinite(model.draft_level_ms(k, context)) and model.draft_level_ms(k, context) > 0
    assert verify.key["target"]["model_type"] == target.config.model_type and len(verify.samples[0][0]) == 1
    assert draft.key["head"]["num_draft_layers"] == 2 and draft.key["head"]["draft_vocab_size"] == 48


def test_contexts_are_cropped_to_the_position_limit():
    target = make_target("llama", max_position_embeddings=128)
    table = cost_model.measure_verify(target, ks=(1, 8), contexts=(32, 512, 1024), reps=1, min_reps=1)
    assert table.contexts == [32, 120] and table.grid == [1, 8]
    # a small model: the grid stops at half its positions, the contexts leave room for the largest k
    small = cost_model.measure_verify(make_target("llama", max_position_embeddings=60), ks=(1, 8, 64), contexts=(16, 512),
                                      reps=1, min_reps=1)
    assert small.grid == [1, 8] and small.contexts == [16, 52]
    assert CostModel(small).verify_ms(64, 16) == CostModel(small).verify_ms(8, 16)  # constant past the grid
    with pytest.raises(ValueError, match="do not fit"):
        cost_model.measure_verify(make_target("llama", max_position_embeddings=1), ks=(1,), contexts=(16,), reps=1)


def test_interpolation_exact_at_grid_points_linear_between():
    model = CostModel(_table())
    table = model.verify
    for i, c in enumerate(table.contexts):
        for j, k in enumerate(table.grid):
            assert model.verify_ms(k, c) == pytest.approx(table.ms[i][j])
    # piecewise linear in k: between grid points 8 and 64 the steps are equal and the values lie between the ends
    values = [model.verify_ms(k, 100) for k in range(8, 65)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s == pytest.approx(steps[0]) for s in steps) and steps[0] > 0
    assert model.verify_ms(3, 100) == pytest.approx(18.0)  # decreasing segment 2 -> 4 is linear too
    assert model.verify_ms(6, 100) == pytest.approx(20.0)
    # linear in context; clamped below the smallest context; extrapolated (never decreasing) above
    assert model.verify_ms(2, 200) == pytest.approx(25.0)
    assert model.verify_ms(2, 0) == pytest.approx(20.0)
    assert model.verify_ms(2, 500) == pytest.approx(40.0)
    assert model.plain_step_ms(200) == model.verify_ms(1, 200) == pytest.approx(12.0)
    for context in (0, 100, 150.5, 300, 1000):
        curve = model.verify_curve(context)
        assert curve.tolist() == pytest.approx([model.verify_ms(k, context) for k in range(1, MAX_K + 1)])


def test_json_round_trip_and_markdown(tmp_path):
    model = CostModel(_table(), _table("draft", contexts=(100, 300)))
    again = CostModel.from_json(model.to_json())
    assert again.to_dict() == model.to_dict()
    model.to_json(tmp_path / "costs.json")
    assert CostModel.from_json(tmp_path / "costs.json").draft_level_ms(4, 100) == pytest.approx(16.0)
    text = model.to_markdown()
    assert "| k | ctx 100 | ctx 300 |" in text and "| 64 | 88.0 | 120.0 |" in text and "| width |" in text


def test_cache_round_trip_measures_once(cache_dir, counting):
    target = make_target("llama")
    head = FSPADDraftModel.from_target(target)
    first = CostModel.for_target(target, head, **CHEAP)
    assert counting == {"verify": 1, "draft": 1}
    assert first.paths["verify"].parent == cache_dir and first.paths["verify"].is_file()
    assert json.loads(first.paths["draft"].read_text())["key"]["head"]["hidden_size"] == 32
    second = CostModel.for_target(target, head, **CHEAP)
    third = CostModel.for_target(target)  # no head: the verify table alone, from the cache
    assert counting == {"verify": 1, "draft": 1}
    assert second.to_dict() == first.to_dict() and third.draft is None
    with pytest.raises(RuntimeError, match="no draft costs"):
        third.draft_level_ms(4)
    CostModel.for_target(target, **{**CHEAP, "contexts": (16, 32)})  # another grid than the cached one
    CostModel.for_target(target, force=True, **CHEAP)
    assert counting["verify"] == 3


def test_key_change_recalibrates(cache_dir, counting):
    target = make_target("llama")
    CostModel.for_target(target, **CHEAP)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        other = CostModel.for_target(target, **CHEAP)
    finally:
        torch.set_num_threads(threads)
    assert counting["verify"] == 2 and other.verify.key["threads"] == threads + 1
    CostModel.for_target(make_target("llama", dtype=torch.bfloat16), **CHEAP)
    CostModel.for_target(make_target("llama", num_hidden_layers=3), **CHEAP)
    assert counting["verify"] == 4
    CostModel.for_target(target, **CHEAP)  # the first key again: still cached
    assert counting["verify"] == 4 and len(list(cache_dir.glob("verify-*.json"))) == 4


def test_stale_or_tampered_table_recalibrates(cache_dir, counting, monkeypatch):
    target = make_target("llama")
    model = CostModel.for_target(target, **CHEAP)
    now = cost_model._now()
    monkeypatch.setattr(cost_model, "_now", lambda: now + 3 * 86400)
    CostModel.for_target(target, max_age_days=7, **CHEAP)
    assert counting["verify"] == 1
    monkeypatch.setattr(cost_model, "_now", lambda: now + 8 * 86400)
    CostModel.for_target(target, max_age_days=7, **CHEAP)
    assert counting["verify"] == 2
    data = json.loads(model.paths["verify"].read_text())
    data["key"]["cpu"] = "another CPU"  # a file whose key does not match (e.g. copied from another machine)
    model.paths["verify"].write_text(json.dumps(data))
    CostModel.for_target(target, **CHEAP)
    model.paths["verify"].write_text("{not json")
    CostModel.for_target(target, **CHEAP)
    assert counting["verify"] == 4


def test_cache_location_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FSPAD_HF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cost_model.cache_root() == tmp_path / "xdg" / "fspad_hf" / "costs"
    monkeypatch.setenv("FSPAD_HF_CACHE", str(tmp_path / "mine"))
    assert cost_model.cache_root() == tmp_path / "mine" / "costs"


def test_bad_input_errors():
    model = CostModel(_table(), _table("draft"))
    for bad in (0, -1, MAX_K + 1):
        with pytest.raises(ValueError, match="1..64"):
            model.verify_ms(bad, 100)
        with pytest.raises(ValueError, match="1..64"):
            model.draft_level_ms(bad)
    with pytest.raises(TypeError):
        model.verify_ms(2.5, 100)
    with pytest.raises(ValueError, match="context"):
        model.verify_curve(-1)
    with pytest.raises(ValueError, match="context"):
        model.verify_ms(4, float("nan"))
    with pytest.raises(ValueError, match="1..64"):
        cost_model.measure_verify(make_target("llama"), ks=(1, 65))
    with pytest.raises(ValueError, match="reps"):
        cost_model.measure_verify(make_target("llama"), ks=(1, 2), contexts=(8,), reps=0)
    with pytest.raises(ValueError, match="grid"):
        CostTable("verify", [2, 4], [10], [[1.0, 2.0]], {}, 0.0, 1, 0.0)  # the grid must start at k = 1
    with pytest.raises(ValueError, match="non-positive"):
        CostTable("verify", [1, 4], [10], [[1.0, float("nan")]], {}, 0.0, 1, 0.0)
    with pytest.raises(ValueError, match="verify"):
        CostModel(_table("draft"))


def test_cli_calibrate_prints_the_table(tmp_path, cache_dir, capsys):
    from fspad_hf.cli import main

    tok = tiny_chat_tokenizer()
    target = make_target("llama", vocab_size=len(tok))
    target.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    head = FSPADDraftModel.from_target(target, draft_vocab_size=64)
    head.save_pretrained(tmp_path / "head")
    threads = torch.get_num_threads()
    try:
        main(["calibrate", "--target", str(tmp_path / "tiny"), "--head", str(tmp_path / "head"), "--threads", "1",
              "--contexts", "16,32", "--reps", "1", "--ks", "1,2,8", "--widths", "1,4"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| k | ctx 16 | ctx 32 |" in out and "| 8 |" in out and "| width | ctx 16 | ctx 32 |" in out
    assert str(cache_dir) in out and len(list(cache_dir.glob("*.json"))) == 2
