"""benchmarks/learning_curve.py: the curve table and its log-linear trend."""

import json
import math

import pytest

from benchmarks.learning_curve import log_fit, main, tokens_for


def test_log_fit_recovers_slope_and_goal():
    pts = [(x, 1.5 + 0.1 * math.log2(x)) for x in (1.0, 2.0, 8.0, 16.0)]  # +0.1 tau per doubling
    a, b = log_fit(pts)
    assert a == pytest.approx(1.5) and b == pytest.approx(0.1)
    assert tokens_for((a, b), 2.0) == pytest.approx(32.0)  # 1.5 + 0.1 * 5
    assert tokens_for((2.0, -0.1), 2.5) is None  # a falling line never reaches the goal
    assert log_fit(pts[:2]) is None  # too few points for a trend


def _bench(path, method, tau):
    path.write_text(json.dumps({"methods": {method: {"overall": {"tau": tau, "acceptance_per_position": [0.5, 0.2],
                                                                   "identical_turns": 40}}}}))


def test_curve_table_trend_and_bad_goal(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps({"source": "s", "examples": 10, "batch_size": 4, "mean_tokens": 250.0,
                                                     "mean_loss_tokens": 125.0}))  # 1,000 tokens per step
    for step, tau in ((1000, 1.6), (2000, 1.7), (4000, 1.8)):
        _bench(tmp_path / f"fspad-{step}.json", "fspad", tau)
    _bench(tmp_path / "poss-4500.json", "poss", 1.9)  # named by its lineage's total step
    main([str(tmp_path), "--goal", "fspad=2.0"])
    text = (tmp_path / "curve.md").read_text()
    assert "| poss | 4500 | 4.50M |" in text
    # 1M, 2M, 4M tokens -> +0.1 per doubling; 2.0 is two doublings past 4M
    assert "| fspad | 3 | +0.100 | 2.0 | ~16M |" in text
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--goal", "fspad:2.0"])


def _two_phases(out):
    """First data: 1,000 tokens per step; from lineage step 2,000 on (fspad only): 2,000 tokens per step."""
    (out / "data.json").write_text(json.dumps({"source": "a", "examples": 10, "batch_size": 4, "mean_tokens": 250.0,
                                                "mean_loss_tokens": 100.0}))
    (out / "data-from-2000.json").write_text(json.dumps({"source": "b", "examples": 20, "batch_size": 4,
                                                          "mean_tokens": 500.0, "mean_loss_tokens": 200.0,
                                                          "methods": ["fspad"]}))


def test_a_later_phase_on_other_data_prices_its_steps_with_its_own_data(tmp_path):
    from benchmarks.learning_curve import read_phases, seen

    _two_phases(tmp_path)
    phases = read_phases(tmp_path, "fspad")
    assert seen(1000, phases) == 1e6 and seen(2000, phases) == 2e6
    assert seen(3000, phases) == 2e6 + 1000 * 2000 and seen(3000, phases, "mean_loss_tokens") == 8e5 + 8e5
    assert seen(3000, read_phases(tmp_path, "poss")) == 3e6  # a lineage the phase does not list: the first data
    for step, tau in ((1000, 1.6), (2000, 1.7), (3000, 1.8)):
        _bench(tmp_path / f"fspad-{step}.json", "fspad", tau)
    _bench(tmp_path / "poss-3000.json", "poss", 1.9)
    main([str(tmp_path)])
    text = (tmp_path / "curve.md").read_text()
    assert "| fspad | 3000 | 4.00M | 1.60M |" in text and "| poss | 3000 | 3.00M | 1.20M |" in text
    assert "Data from lineage step 2,000 on (fspad): 20 training" in text


def test_trend_fits_the_first_phase_and_tests_a_later_phase_against_it(tmp_path):
    _two_phases(tmp_path)
    for step, tau in ((500, 1.5), (1000, 1.6), (2000, 1.7), (3000, 1.75)):  # 0.5M, 1M, 2M, then 4M tokens seen
        _bench(tmp_path / f"fspad-{step}.json", "fspad", tau)
    main([str(tmp_path)])
    text = (tmp_path / "curve.md").read_text()
    # the fit is +0.1 per doubling over the first three points only (with the fourth it would be flatter)
    assert "| fspad | 3 | +0.100 | - | - |" in text
    assert "| fspad | 3000 | 4.00M | 1.750 | 1.800 | -0.050 |" in text


def test_a_head_continued_from_a_later_phase_is_priced_through_every_phase_of_its_lineage(tmp_path):
    """PosS from pair2's FSPAD head (PHASE=poss2): the first data, pair2's data, then its own fresh data."""
    from benchmarks.learning_curve import read_phases, seen

    _two_phases(tmp_path)
    data = json.loads((tmp_path / "data-from-2000.json").read_text())
    (tmp_path / "data-from-2000.json").write_text(json.dumps({**data, "methods": ["fspad", "poss2"]}))
    (tmp_path / "data-from-3000.json").write_text(json.dumps({"source": "c", "examples": 5, "batch_size": 4,
                                                               "mean_tokens": 125.0, "mean_loss_tokens": 50.0,
                                                               "methods": ["poss2"]}))
    assert seen(3500, read_phases(tmp_path, "poss2")) == 2e6 + 2e6 + 500 * 500
    assert seen(3500, read_phases(tmp_path, "fspad")) == 2e6 + 1500 * 2000  # fspad stays on pair2's data
    for step, tau in ((1000, 1.6), (2000, 1.7), (3000, 1.8)):
        _bench(tmp_path / f"fspad-{step}.json", "fspad", tau)
    _bench(tmp_path / "poss2-3500.json", "poss2", 1.95)
    main([str(tmp_path)])
    text = (tmp_path / "curve.md").read_text()
    assert "| poss2 | 3500 | 4.25M |" in text
    assert "| poss2 |" not in text.split("Trend")[1]  # no first-phase points: no fit, no row
