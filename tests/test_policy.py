"""The adaptive tree policy (decoding/policy.py): the pure choice, acceptance estimates and pruning, online
calibration, and lossless decoding priced by hand-built cost tables (no timing involved)."""

import dataclasses
import math

import pytest
import torch

import fspad_hf
from fspad_hf import FSPADDraftModel
from fspad_hf.decoding.cost_model import MAX_K, CostModel, CostTable
from fspad_hf.decoding.policy import (
    AdaptiveDrafter, Calibration, CostCorrection, PolicyParams, RoundRates, acceptance, choose_size, drafting_loses, learned_state, prune,
)
from fspad_hf.decoding.round_costs import DRAFTED, SHADOW, TREE, UNDRAFTED, retrieval_loses, shadow_estimates, shadow_tokens
from fspad_hf.decoding.retrieval import MergedTree
from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.decoding.tree import ancestor_mask
from tests.conftest import make_target


def curve(*head, rest=None):
    """A `[64]` verify curve: the given ms for k = 1, 2, ..., then `rest` (default: the last value)."""
    values = list(head) + [head[-1] if rest is None else rest] * (MAX_K - len(head))
    return torch.tensor(values, dtype=torch.float64)


def cost_model(verify_ms, draft_ms=1.0):
    """A CostModel from a synthetic table: `verify_ms` = ms at k = 1, 2, 3, ... (constant after), one context."""
    grid = list(range(1, len(verify_ms) + 1))
    verify = CostTable("verify", grid, [100], [list(verify_ms)], {"kind": "verify"}, 0.0, 1, 0.0)
    draft = CostTable("draft", [1, 64], [100], [[draft_ms, draft_ms]], {"kind": "draft"}, 0.0, 1, 0.0)
    return CostModel(verify, draft, corrected=False)  # these hypothetical costs are the truth of the test


# ------------------------------------------------------------------------------------ the pure choice
def brute_force(p, c, draft_ms):
    rates = [(1 + sum(p[:t])) / (draft_ms + c[t]) for t in range(min(len(p), len(c) - 1) + 1)]
    return max(range(len(rates)), key=lambda t: (rates[t], -t))


@pytest.mark.parametrize("p,head,draft_ms,expected", [
    ([0.9, 0.5, 0.1], (10, 11, 12, 30), 0.0, 2),  # the third node costs 18 ms for 0.1 token
    ([0.9, 0.5, 0.1], (10, 20, 20.5, 21), 0.0, 3),  # flat after k = 2: take everything
    ([0.9, 0.5, 0.1], (10, 11, 12, 30), 100.0, 2),
    ([0.05], (10, 20), 0.0, 0),  # one unlikely node does not pay for a doubled forward: plain step
    ([0.0, 0.0], (10,), 0.0, 0),  # ties go to the smaller tree
    ([0.9] * 80, (1,), 0.0, MAX_K - 1),  # at most 63 nodes (64 tokens with the root)
])
def test_choose_size_on_known_probabilities_and_costs(p, head, draft_ms, expected):
    c = curve(*head)
    t = int(choose_size(torch.tensor(p), c, draft_ms))
    assert t == expected == brute_force(p, c.tolist(), draft_ms)


def test_choose_size_matches_brute_force_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = torch.rand(int(torch.randint(0, 40, (1,), generator=g)), generator=g).sort(descending=True).values
        c = torch.cumsum(torch.rand(MAX_K, generator=g, dtype=torch.float64) * 5, 0) + 10
        draft_ms = float(torch.rand(1, generator=g)) * 20
        assert int(choose_size(p, c, draft_ms)) == brute_force(p.tolist(), c.tolist(), draft_ms)


def test_choose_size_picks_measured_sizes_only():
    """Between grid points a forward can cost far more than interpolated: only measured k = T + 1 are chosen."""
    c = curve(10, 10.5, 11, 11.5, 12)  # nearly flat: the best unrestricted tree verifies every candidate
    p = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert int(choose_size(p, c, 0.0)) == 4
    allowed = torch.zeros(MAX_K, dtype=torch.bool)
    allowed[[0, 1, 3]] = True  # k = 1, 2, 4 measured; k = 3 and 5 interpolated
    assert int(choose_size(p, c, 0.0, allowed)) == 3  # k = 4
    allowed[3] = False
    assert int(choose_size(p, c, 0.0, allowed)) == 1  # k = 2
    assert int(choose_size(torch.tensor([0.01]), c, 0.0, allowed)) == 0  # a plain step is always allowed


def test_measured_sizes_of_a_table():
    table = CostTable("verify", [1, 2, 4, 8], [100], [[1.0, 2.0, 3.0, 4.0]], {"kind": "verify"}, 0.0, 1, 0.0)
    mask = table.measured()
    assert mask.shape == (MAX_K,) and mask[[0, 1, 3, 7]].all() and not mask[[2, 4, 5, 6]].any()
    assert mask[8:].all()  # past a grid cut short (small model): constant cost, as before
    from fspad_hf.decoding.cost_model import DEFAULT_KS

    assert set(range(1, 17)) <= set(DEFAULT_KS) and DEFAULT_KS[-1] == MAX_K


def hand_tree():
    """root -> a (head, p .5), b (head, .3); b -> c (head, raw .29); a -> d (retrieval)."""
    parents = torch.tensor([0, 0, 2, 1])
    scores = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.29), float("nan")])
    return MergedTree(tokens=torch.tensor([5, 6, 7, 8]), parents=parents, depth=torch.tensor([1, 1, 2, 2]),
                      ancestors=ancestor_mask(parents, 2), scores=scores, source=torch.tensor([0, 0, 0, 1]))


def test_estimates_are_calibrated_and_capped_by_the_parent():
    tree = hand_tree()
    ratio = torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64)  # depth 2 head nodes count double
    rate = torch.tensor([0.5, 0.5, 0.9, 0.5], dtype=torch.float64)
    p, raw, is_ret = acceptance(tree, ratio, rate)
    # c: 2 * .29 = .58 capped by b (.3); d: retrieval rate .9 capped by a (.5)
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(raw, torch.tensor([0.5, 0.3, 0.29, 0.0], dtype=torch.float64))
    assert is_ret.tolist() == [False, False, False, True]
    order = torch.argsort(p, descending=True, stable=True)
    assert order.tolist() == [0, 3, 1, 2]  # ties to the earlier slot: a parent before its child
    sub = prune(tree, order[:2].sort().values)  # a and d
    assert isinstance(sub, MergedTree)
    assert sub.tokens.tolist() == [5, 8] and sub.parents.tolist() == [0, 1] and sub.source.tolist() == [0, 1]
    assert torch.equal(sub.ancestors, ancestor_mask(sub.parents, 2))
    sub = prune(tree, order[:3].sort().values)  # a, b, d
    assert sub.tokens.tolist() == [5, 6, 8] and sub.parents.tolist() == [0, 0, 1]


def test_calibration_moves_toward_the_observed_rate():
    params = PolicyParams(decay=0.8)
    cal = Calibration(4, params)
    depth = torch.tensor([1, 2, 1])
    raw = torch.tensor([0.5, 0.8, 0.0], dtype=torch.float64)  # a head chain (depth 1, 2) and a retrieval node
    is_ret = torch.tensor([False, False, True])
    path = torch.tensor([0, 1])  # the depth-1 head node is always accepted, its child never
    ratios, rates = [cal.head_ratio().clone()], [cal.retrieval_rate().clone()]
    for _ in range(40):
        cal.update(depth, raw, is_ret, path)
        ratios.append(cal.head_ratio().clone())
        rates.append(cal.retrieval_rate().clone())
    first = [r[1].item() for r in ratios]
    second = [r[2].item() for r in ratios]
    retrieval = [r[0, 1].item() for r in rates]  # [M, D + 1]: one (pooled) match class here
    assert first[0] == 1.0 and all(b > a for a, b in zip(first, first[1:11]))  # observed 1 vs predicted .5: up
    assert first[-1] == pytest.approx(2.0, abs=0.02)  # 1 / .5, at the clip
    assert all(b < a for a, b in zip(second, second[1:11])) and second[-1] < 0.1  # observed 0 vs .8: down
    assert second[-1] >= params.c_min
    assert retrieval[0] == 0.5 and all(b < a for a, b in zip(retrieval, retrieval[1:11]))  # offered, never taken
    assert ratios[-1][3].item() == 1.0 and rates[-1][0, 3].item() == 0.5  # depths never offered keep their prior
    path = torch.tensor([0, 3])  # now the retrieval node is accepted every round
    for _ in range(60):
        cal.update(depth, raw, is_ret, path)
    assert cal.retrieval_rate()[0, 1].item() > 0.9  # ~10 rounds of memory against 1 pseudo-node of prior


def test_retrieval_rates_are_learned_per_match_length_and_back_off_to_the_pooled_rate():
    """A 6-gram continuation always accepted and a 2-gram one never: each class learns its own rate; a class
    not yet verified at a depth takes the pooled rate of that depth; `acceptance` prices nodes by their class.
    decay 0.8: ~5 rounds of memory."""
    params = PolicyParams(decay=0.8)
    cal = Calibration(3, params, match_classes=7)
    depth = torch.tensor([1, 1])
    raw = torch.zeros(2, dtype=torch.float64)
    is_ret = torch.tensor([True, True])
    match = torch.tensor([6, 2])
    for _ in range(60):
        cal.update(depth, raw, is_ret, torch.tensor([0, 1]), match)  # the 6-gram node (slot 1) is accepted
    rate = cal.retrieval_rate()  # [7, 4]
    assert rate.shape == (7, 4)
    assert rate[6, 1].item() > 0.9
    assert rate[2, 1].item() < 0.1
    first = Calibration(3, params, match_classes=7)  # counts, not means: one round of 4 rejected chains moves far
    first.update(torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.bool),
                 torch.tensor([0]), torch.full((4,), 3))
    assert first.retrieval_rate()[3, 1].item() < 0.15 and first.retrieval_rate()[0, 1].item() < 0.15
    assert rate[0, 1].item() == pytest.approx(0.5, abs=0.01)  # pooled: one of the two offered nodes taken
    assert rate[4, 1].item() == rate[0, 1].item()  # match 4 never verified at depth 1: the pooled rate
    assert rate[6, 2].item() == params.retrieval_prior  # nothing verified at depth 2: the prior
    tree = MergedTree(tokens=torch.tensor([5, 6, 7]), parents=torch.tensor([0, 0, 0]), depth=torch.tensor([1, 1, 1]),
                      ancestors=ancestor_mask(torch.tensor([0, 0, 0]), 3), scores=None,
                      source=torch.ones(3, dtype=torch.long), match=torch.tensor([6, 2, 9]))
    p, _, _ = acceptance(tree, cal.head_ratio(), rate)
    assert p.tolist() == pytest.approx([rate[6, 1].item(), rate[2, 1].item(), rate[6, 1].item()])  # 9: class 6


# ------------------------------------------------------------------------------------ decoding
def repeated_prompt(seed: int, phrase: int = 12, times: int = 3) -> torch.LongTensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 96, (phrase,), generator=g).repeat(times)[None]


MODERATE = (10.0, 10.5, 11.0, 11.5, 12.0, 13.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 56.0)


@pytest.mark.parametrize("arch,seed,branches", [("llama", 2, 0), ("llama", 2, 3), ("gemma3", 0, 3), ("qwen2", 0, 0)])
def test_adaptive_greedy_identity(arch, seed, branches):
    target = make_target(arch, seed=seed)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(seed)
    ref = target.generate(ids, max_new_tokens=48, do_sample=False)
    out = target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cost_model(MODERATE, 0.5),
                          retrieval_branches=branches, max_new_tokens=48)
    assert torch.equal(out, ref)
    stats = head.last_generation_stats
    assert stats.settings.policy == "adaptive" and len(stats.predicted_ms) == stats.num_rounds
    assert all(p >= 10.0 for p in stats.predicted_ms)
    assert max(stats.tree_sizes) > 0, "the policy never verified a node: the test would be vacuous"
    if branches:
        assert sum(stats.accepted_from_retrieval) > 0
    assert stats.summary()["cost_model_error"] is not None


def test_retrieval_only_adaptive_greedy_identity():
    target = make_target("llama", seed=2)
    ids = repeated_prompt(2)
    ref = target.generate(ids, max_new_tokens=48, do_sample=False)
    out = target.generate(ids, custom_generate=fspad_hf.tree_generate, retrieval_branches=3, tree_policy="adaptive",
                          cost_model=cost_model(MODERATE), max_new_tokens=48, do_sample=False)
    assert torch.equal(out, ref)
    stats = fspad_hf.tree_generate.last_generation_stats
    assert sum(stats.accepted_from_retrieval) > 0 and len(stats.predicted_ms) == stats.num_rounds


@pytest.mark.parametrize("loses", [False, True])
def test_retrieved_trees_that_lose_to_plain_steps_are_verified_only_at_probes(monkeypatch, loses):
    """Rule step 7 without the head: while retrieved trees lose, only probes verify one; the gap then doubles."""
    import fspad_hf.decoding.policy as policy

    monkeypatch.setattr(policy, "retrieval_loses", lambda rates, guard_rounds, plain_ms: loses)
    target = make_target("llama", seed=2)
    ids = repeated_prompt(2, times=6)
    ref = target.generate(ids, max_new_tokens=60, do_sample=False)
    cm = cost_model(MODERATE)
    cm.corrected = True  # the guards act on measured rounds only
    out = target.generate(ids, custom_generate=fspad_hf.tree_generate, retrieval_branches=3, tree_policy="adaptive",
                          cost_model=cm, max_new_tokens=60, do_sample=False)
    assert torch.equal(out, ref)
    sizes = fspad_hf.tree_generate.last_generation_stats.tree_sizes
    trees = [i for i, t in enumerate(sizes) if t]
    if not loses:  # the repeated phrase is retrieved and verified in most rounds
        assert len(trees) > len(sizes) // 2
        return
    params = PolicyParams()
    probes, i, gap = [], params.probe_every - 1, params.probe_every
    while i < len(sizes):  # rounds 7, 23, 55, ... (each probe that verified a tree doubles the gap)
        probes.append(i)
        if sizes[i]:
            gap = min(2 * gap, params.max_probe_gap * params.probe_every)
        i += gap
    assert trees and set(trees) <= set(probes)


@pytest.mark.parametrize("branches", [0, 3])
def test_expensive_verification_gives_plain_steps(branches):
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(2)
    ref = target.generate(ids, max_new_tokens=100, do_sample=False)
    out = target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cost_model((10.0, 1e6), 1.0),
                          retrieval_branches=branches, max_new_tokens=100)
    assert torch.equal(out, ref)
    stats = head.last_generation_stats
    assert stats.tree_sizes == [0] * stats.num_rounds  # never worth a second token
    params = PolicyParams()
    drafted = [i for i, p in enumerate(stats.predicted_ms) if p > 10.0]  # drafted: 10 ms + 1 ms per level
    # `patience` drafted rounds, then plain steps with probes whose gaps double while they keep choosing T = 0
    # (rule step 6): 8, 16, 32 rounds (the next, 64, falls past the 99 rounds of 100 tokens)
    last = params.patience - 1
    probes = [last + params.probe_every * (2**j - 1) for j in range(1, 4)]
    assert drafted == list(range(params.patience)) + probes
    assert all(p == 10.0 for i, p in enumerate(stats.predicted_ms) if i not in drafted)  # the rest: plain steps


def test_free_verification_verifies_every_candidate():
    # near-uniform draft distributions: every path probability (>= ~1e-8) adds to 1 + sum in float64 (with the
    # peaky default init, deep paths fall below float64 resolution next to 1 and ties rightly go to the smaller T)
    target = make_target("llama", seed=2, initializer_range=0.02)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(2)
    # the static tree of 30 nodes keeps all 3 + 3 * 9 created nodes (the head's own static tree keeps 10)
    static = target.generate(ids, assistant_model=head, tree_total_tokens=30, max_new_tokens=40, tree_policy="static",
                             retrieval_branches=0)
    static_sizes = head.last_generation_stats.tree_sizes
    out = target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cost_model((1e-3,), 1e-12),
                          max_new_tokens=40, retrieval_branches=0)
    assert torch.equal(out, static)
    assert head.last_generation_stats.tree_sizes == static_sizes and max(static_sizes) == 30


def test_policy_from_the_head_config_and_the_machine_cost_model(monkeypatch):
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3, tree_policy="adaptive")
    assert head.config.tree_policy == "adaptive"
    calls = []

    def for_target(cls, tgt, hd=None, **kwargs):
        calls.append((tgt, hd))
        return cost_model((10.0, 1e6))

    monkeypatch.setattr(CostModel, "for_target", classmethod(for_target))
    ids = repeated_prompt(2)
    ref = target.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(target.generate(ids, assistant_model=head, max_new_tokens=20), ref)
    assert calls == [(target, head)] and head.last_generation_stats.tree_sizes == [0] * head.last_generation_stats.num_rounds
    target.generate(ids, assistant_model=head, tree_policy="static", max_new_tokens=20)  # per call: the static tree
    assert len(calls) == 1 and head.last_generation_stats.predicted_ms == []
    with pytest.raises(ValueError, match="tree_policy"):
        target.generate(ids, assistant_model=head, tree_policy="greedy", max_new_tokens=3)
    with pytest.raises(ValueError, match="tree_policy"):
        FSPADDraftModel.from_target(target, tree_policy="fast")
    assert TreeSettings.resolve(None).policy == "adaptive"  # head-free decoding: the config defaults too


# ------------------------------------------------------------------------------------ measured costs, memory
def test_cost_correction_learns_scale_offset_and_other_time():
    fix = CostCorrection(decay=0.5)
    assert fix.draft_scale() == 1.0 and fix.verify_offset == 0.0 and fix.other_ms == 0.0  # priors
    fix.update(predicted_draft=10.0, predicted_verify=50.0, draft_ms=20.0, verify_ms=58.0, round_ms=80.0)
    assert fix.draft_scale() == pytest.approx(2.0)  # the first round replaces the priors
    assert fix.verify_offset == pytest.approx(8.0) and fix.other_ms == pytest.approx(2.0)
    for _ in range(40):  # the machine got faster: the EMAs follow
        fix.update(10.0, 50.0, 5.0, 45.0, 51.0)
    assert fix.draft_scale() == pytest.approx(0.5, abs=1e-3)
    assert fix.verify_offset == pytest.approx(-5.0, abs=1e-3) and fix.other_ms == pytest.approx(1.0, abs=1e-3)
    fix.update(0.0, 50.0, 0.3, 45.0, None)  # a plain step: no draft prediction, no round time
    assert fix.draft_scale() == pytest.approx(0.5, abs=1e-3) and fix.other_ms == pytest.approx(1.0, abs=1e-3)
    table = torch.tensor([10.0, 20.0], dtype=torch.float64)
    fix.verify_offset = -8.0
    assert fix.verify_curve(table).tolist() == [5.0, 12.0]  # never below half the table
    fix.draft_measured, fix.draft_predicted = 100.0, 1.0
    assert fix.draft_scale() == CostCorrection.SCALE_RANGE[1]


def test_measured_costs_correct_the_predictions_and_are_remembered():
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(2)
    ref = target.generate(ids, max_new_tokens=30, do_sample=False)
    tables = cost_model(MODERATE, 0.5)
    cm = CostModel(tables.verify, tables.draft)  # corrected (the default): learns from the measured times
    out = target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cm, max_new_tokens=30)
    assert torch.equal(out, ref)
    stats = head.last_generation_stats
    settings = stats.settings
    memory = learned_state(target, head, cm, settings)
    fix = memory["correction"]
    assert fix.rounds == stats.num_rounds - 1  # every round but the last was compared with its measurement
    # the tiny model runs in ~1 ms, far below the 10+ ms of the table: the offset went negative
    assert fix.verify_offset < 0
    assert stats.predicted_ms[0] >= 10.0  # the first round had only the table
    calibration = memory["calibration"]
    rates = memory["rates"]  # rule step 7 with retrieval on: each measured drafted round has its retrieval shadow
    assert settings.retrieval_branches > 0 and rates.rounds[DRAFTED] > 0
    assert rates.rounds[SHADOW] == rates.rounds[DRAFTED]
    assert rates.rounds[DRAFTED] + rates.rounds[TREE] + rates.rounds[UNDRAFTED] == stats.num_rounds - 1
    target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cm, max_new_tokens=30,
                    retrieval_branches=0)  # without retrieval: plain probes measure rounds without the head
    no_ret = learned_state(target, head, cm, head.last_generation_stats.settings)["rates"]
    assert no_ret.rounds[DRAFTED] > 0 and no_ret.rounds[UNDRAFTED] > 0 and no_ret.rounds[SHADOW] == 0
    learned = calibration.head_acc.clone()
    assert not torch.equal(learned, torch.ones_like(learned))  # the head's acceptance was learned
    # a second call starts from what the first learned (same objects), not from the priors
    target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cm, max_new_tokens=30)
    assert learned_state(target, head, cm, settings)["calibration"] is calibration and fix.rounds > stats.num_rounds
    other = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    assert learned_state(target, other, cm, settings) == {}  # per head ...
    assert learned_state(target, head, cm, dataclasses.replace(settings, retrieval_branches=2)) == {}  # ... and settings


def record_drafted_rounds(monkeypatch) -> list[bool]:
    """Patch AdaptiveDrafter.draft to append, per round, whether the head drafted it; returns that list."""
    drafted: list[bool] = []
    draft = AdaptiveDrafter.draft

    def recording_draft(self, *args, **kwargs):
        tree = draft(self, *args, **kwargs)
        drafted.append(self._kind == DRAFTED)
        return tree

    monkeypatch.setattr(AdaptiveDrafter, "draft", recording_draft)
    return drafted


def test_probes_thin_out_while_the_guard_holds_and_each_call_looks_afresh(monkeypatch):
    """Rule step 7: after each probe that leaves the guard holding, the gap to the next doubles (8, 16, 32, ...)."""
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(2)
    ref = target.generate(ids, max_new_tokens=100, do_sample=False)
    drafted = record_drafted_rounds(monkeypatch)
    monkeypatch.setattr(AdaptiveDrafter, "_drafting_loses", lambda self, plain_ms: True)  # the head always loses
    params = PolicyParams()
    for _ in range(2):
        drafted.clear()
        out = target.generate(ids, assistant_model=head, tree_policy="adaptive", cost_model=cost_model(MODERATE),
                              retrieval_branches=0, max_new_tokens=100, do_sample=False)
        assert torch.equal(out, ref) and len(drafted) > 56  # rounds without the head emit one token each
        probes = [i for i, d in enumerate(drafted) if d]
        gaps = [params.probe_every * 2**j for j in range(3)]  # 8, 16, 32 rounds, then 64 (the cap, 8 x 8)
        assert probes[:4] == [0, gaps[0], gaps[0] + gaps[1], sum(gaps)]
        assert len(probes) == 4 + (len(drafted) > sum(gaps) + params.max_probe_gap * params.probe_every)


def test_a_new_call_judges_the_head_on_its_own_rounds(monkeypatch):
    """Rule step 7 is not carried across calls: memory saying the head loses (a copy-heavy previous turn) does not
    keep it off in the next call; the guard waits for `guard_rounds` drafted rounds of this call."""
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
    ids = repeated_prompt(2)
    tables = cost_model(MODERATE, 0.5)
    cm = CostModel(tables.verify, tables.draft)  # corrected: the guard runs on measured rounds
    kwargs = dict(assistant_model=head, tree_policy="adaptive", cost_model=cm, max_new_tokens=40, do_sample=False)
    target.generate(ids, **kwargs)
    rates = learned_state(target, head, cm, head.last_generation_stats.settings)["rates"]
    for _ in range(10):  # the previous text: the head's rounds far behind retrieval alone's and plain steps
        rates.update(DRAFTED, tokens=1, ms=1e6)
        rates.update(SHADOW, tokens=9, ms=1.0)
        rates.update(UNDRAFTED, tokens=1, ms=10.0)
    plain_rounds = rates.rounds[UNDRAFTED]
    assert drafting_loses(rates, PolicyParams().guard_rounds, plain_ms=10.0)
    drafted = record_drafted_rounds(monkeypatch)
    out = target.generate(ids, **kwargs)
    assert torch.equal(out, target.generate(ids, max_new_tokens=40, do_sample=False))
    guard = PolicyParams().guard_rounds
    assert len(drafted) > guard and all(drafted[:guard])  # before: drafted[1] was False (the old verdict held)
    assert rates.rounds[UNDRAFTED] >= plain_rounds  # the measured plain-step cost is kept


def test_a_new_call_starts_at_the_depth_the_last_one_learned(monkeypatch):
    """Rule step 4's depth is remembered: where levels cost more than they gain, a new call's first drafted round
    drafts one level, not the tree's depth; where they pay, the full depth."""
    target = make_target("llama", seed=2)
    ids = repeated_prompt(2)
    limits: list[int] = []
    draft = AdaptiveDrafter.draft

    def recording_draft(self, *args, **kwargs):
        tree = draft(self, *args, **kwargs)
        limits.append(self.head.depth_limit)  # the depth this round drafted to (set inside draft)
        return tree

    monkeypatch.setattr(AdaptiveDrafter, "draft", recording_draft)
    for level_ms, depth in ((1e4, 1), (1e-12, 4)):  # a level costing 1,000 plain steps never pays; a ~free one does
        head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)
        cm = cost_model(MODERATE, level_ms)
        kwargs = dict(assistant_model=head, tree_policy="adaptive", cost_model=cm, retrieval_branches=0,
                      max_new_tokens=20, do_sample=False)
        target.generate(ids, **kwargs)
        assert learned_state(target, head, cm, head.last_generation_stats.settings)["depth"] == depth
        limits.clear()
        target.generate(ids, **kwargs)
        assert limits[0] == depth, limits  # before: every call began at tree_depth (4)


def test_round_rates_forget_text_verdicts_at_a_new_call():
    rates = RoundRates(decay=0.5)
    for kind, tokens in ((DRAFTED, 1), (SHADOW, 4), (TREE, 3), (UNDRAFTED, 1)):
        for _ in range(3):
            rates.update(kind, tokens=tokens, ms=10.0)
    rates.new_call()
    assert [rates.rounds[k] for k in (DRAFTED, SHADOW, TREE, UNDRAFTED)] == [0, 0, 0, 3]
    assert not drafting_loses(rates, 2, plain_ms=1.0) and not retrieval_loses(rates, 2, plain_ms=1.0)
    rates.update(DRAFTED, tokens=5, ms=10.0)  # the first round of the new call replaces the old EMA
    assert rates.rate(DRAFTED) == pytest.approx(0.5)


def test_the_realised_rate_guard_compares_drafted_rounds_with_rounds_without_the_head():
    rates = RoundRates(decay=0.5)
    assert rates.rate(DRAFTED) is None and not drafting_loses(rates, 2, plain_ms=10.0)
    rates.update(DRAFTED, tokens=2, ms=30.0)  # 1/15 token per ms
    assert not drafting_loses(rates, 2, plain_ms=10.0)  # one drafted round is not enough evidence
    rates.update(DRAFTED, tokens=2, ms=30.0)
    assert drafting_loses(rates, 2, plain_ms=10.0)  # 1/15 < one token per 10 ms plain step
    assert not drafting_loses(rates, 2, plain_ms=20.0)  # 1/15 > 1/20
    rates.update(UNDRAFTED, tokens=1, ms=20.0)  # measured rounds without the head replace the plain estimate
    assert rates.rate(UNDRAFTED) == pytest.approx(1 / 20) and not drafting_loses(rates, 2, plain_ms=10.0)
    for _ in range(6):
        rates.update(DRAFTED, tokens=1, ms=30.0)  # the head's rounds get worse: the EMA follows
    assert rates.rate(DRAFTED) < 1 / 20 and drafting_loses(rates, 2, plain_ms=1e9)


def test_the_retrieval_shadow_joins_the_alternatives_once_known():
    rates = RoundRates(decay=0.5)
    for _ in range(2):
        rates.update(DRAFTED, tokens=3, ms=60.0)  # 1/20 token per ms
    rates.update(SHADOW, tokens=4, ms=50.0)
    assert not drafting_loses(rates, 2, plain_ms=25.0)  # one shadow is not evidence yet: vs plain steps (1/25)
    rates.update(SHADOW, tokens=4, ms=50.0)  # retrieval alone: 2/25 token per ms on the same rounds
    assert drafting_loses(rates, 2, plain_ms=25.0)
    for _ in range(4):
        rates.update(DRAFTED, tokens=5, ms=60.0)
        rates.update(SHADOW, tokens=2, ms=50.0)  # text retrieval cannot copy: the head wins again
    assert not drafting_loses(rates, 2, plain_ms=25.0)
    assert drafting_loses(rates, 2, plain_ms=10.0)  # ... unless even a plain step beats it (then both lose)


def test_retrieved_trees_without_the_head_are_compared_with_plain_steps():
    rates = RoundRates(decay=0.5)
    rates.update(TREE, tokens=1.2, ms=30.0)
    assert not retrieval_loses(rates, 2, plain_ms=20.0)  # one round is not evidence
    rates.update(TREE, tokens=1.2, ms=30.0)  # 1/25 token per ms
    assert retrieval_loses(rates, 2, plain_ms=20.0) and not retrieval_loses(rates, 2, plain_ms=30.0)
    rates.update(UNDRAFTED, tokens=1, ms=40.0)  # measured plain steps replace the table's estimate
    assert not retrieval_loses(rates, 2, plain_ms=20.0)


def _shadow_tree():
    """Root -> a (head), b (head and retrieval); b -> c (retrieval) -> d (retrieval); a -> e (head)."""
    parents = torch.tensor([0, 0, 2, 3, 1])
    depth = torch.tensor([1, 1, 2, 3, 2])
    return MergedTree(tokens=torch.tensor([5, 6, 7, 8, 9]), parents=parents, depth=depth,
                      ancestors=ancestor_mask(parents, 3), scores=torch.tensor([-0.1, -0.5, nan, nan, -0.3]),
                      source=torch.tensor([0, 0, 1, 1, 0]), match=torch.tensor([0, 0, 3, 3, 0]),
                      retrieved=torch.tensor([False, True, True, True, False]))


nan = float("nan")


def test_shadow_estimates_price_retrieved_nodes_only():
    tree = _shadow_tree()
    rate = torch.tensor([[1.0, 0.9, 0.6, 0.5], [1.0, 0.2, 0.2, 0.2], [1.0, 0.2, 0.2, 0.2], [1.0, 0.8, 0.7, 0.9]],
                        dtype=torch.float64)  # [match class, depth]
    p = shadow_estimates(tree, rate)
    assert p[0] == -math.inf and p[4] == -math.inf  # the head's own nodes: never in retrieval's tree
    assert p[1].item() == pytest.approx(0.9)  # shared node b: no match length recorded -> pooled class 0, depth 1
    assert p[2].item() == pytest.approx(0.7)  # c: class 3, depth 2 (0.7), below its parent's 0.9
    assert p[3].item() == pytest.approx(0.7)  # d: class 3, depth 3 (0.9), capped by its ancestor c
    # in the policy: the best retrieval-only tree under a flat cost holds b, c, d and never a or e
    order = torch.argsort(p, descending=True, stable=True)
    size = choose_size(p[order], torch.full((MAX_K,), 10.0, dtype=torch.float64), 0.0)
    assert size.item() == 3 and set(order[:3].tolist()) == {1, 2, 3}


def test_shadow_tokens_count_the_leading_accepted_nodes_retrieval_held():
    in_shadow = torch.tensor([False, True, True, False, False])
    assert shadow_tokens(in_shadow, torch.tensor([0, 2, 3, 4])).item() == 3  # b, c held; d not: bonus + 2
    assert shadow_tokens(in_shadow, torch.tensor([0, 1, 5])).item() == 1  # the head's branch a: bonus only
    assert shadow_tokens(in_shadow, torch.tensor([0])).item() == 1  # nothing accepted: a plain step
    assert shadow_tokens(torch.zeros(0, dtype=torch.bool), torch.tensor([0])).item() == 1  # an empty tree
