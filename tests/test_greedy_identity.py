"""Greedy tree decoding is token-identical to plain generate() (float32), and its acceptance stats agree
with the output and the tree limits."""

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.decoding.cost_model import MAX_K
from fspad_hf.decoding.generation import run_tree_decoding
from fspad_hf.decoding.stats import GenerationStats
from tests.conftest import ARCHS, OracleDrafter, make_target

ORACLE_DEPTH = 5  # the oracle's main branch: 5 drafted tokens, all accepted; distractor children reach depth 6
ORACLE_BRANCH = 2


def _prompt(seed: int, length: int, vocab: int = 96) -> torch.LongTensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def oracle_generate(target, ids, oracle, **kwargs) -> tuple[torch.LongTensor, GenerationStats]:
    """generate() through tree decoding with the oracle drafter; returns (output, the call's stats)."""
    stats = GenerationStats()

    def decode(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
               streamer=None, **model_kwargs):
        return run_tree_decoding(model, input_ids, oracle, logits_processor, stopping_criteria, generation_config,
                                 streamer, stats)

    return target.generate(ids, custom_generate=decode, **kwargs), stats


def check_stats(stats: GenerationStats, n_generated: int, max_depth: int, max_nodes: int, min_nodes: int = 1) -> None:
    """Counters of one call agree with its output and with the tree limits (any drafter)."""
    rounds = stats.num_rounds
    acc, new = stats.accepted_lengths, stats.new_tokens_per_round
    assert len(new) == len(stats.tree_sizes) == len(stats.draft_seconds) == len(stats.verify_seconds) == rounds
    assert 1 + sum(new) == n_generated, f"prefill token + emitted {new} != {n_generated} generated tokens"
    assert all(0 <= a <= max_depth for a in acc), f"accepted {acc} beyond tree depth {max_depth}"
    # every round emits its accepted tokens + the bonus; only the last one can be cut (max_new_tokens / EOS)
    assert new[:-1] == [a + 1 for a in acc[:-1]], (acc, new)
    assert not rounds or 1 <= new[-1] <= acc[-1] + 1, (acc, new)
    assert all(min_nodes <= t <= max_nodes for t in stats.tree_sizes), stats.tree_sizes
    trials = stats.position_trials
    assert len(trials) <= max_depth and len(stats.position_accepts) == len(trials)
    drafted = sum(t > 0 for t in stats.tree_sizes)  # a plain step (0 nodes) has no depth-1 trial
    assert trials == sorted(trials, reverse=True) and (not drafted or trials[0] == drafted), trials
    # a round accepting a tokens counts as an accept at depths 1..a
    assert stats.position_accepts == [sum(a > p for a in acc) for p in range(len(trials))], stats.position_accepts
    assert stats.mean_accepted_length == ((sum(acc) + rounds) / rounds if rounds else 0.0)
    assert stats.target_forwards == rounds + 1


def check_head_stats(head, ids, out, total: int, depth: int, top_k: int) -> None:
    """The head's stats of its last call: that call's prompt, tree shape and counters. Retrieval paths reach
    `retrieval_length` deep and add their nodes; the adaptive policy verifies 0 (a plain step) to 63 nodes."""
    stats = head.last_generation_stats
    s = stats.settings
    assert stats.prompt_length == ids.shape[1]
    assert (s.total_tokens, s.depth, s.top_k) == (total, depth, top_k)
    if s.retrieval_branches:
        depth, total = max(depth, s.retrieval_length), total + s.retrieval_branches * s.retrieval_length
    if s.policy == "adaptive":
        assert len(stats.predicted_ms) == stats.num_rounds
        check_stats(stats, out.shape[1] - ids.shape[1], depth, MAX_K - 1, min_nodes=0)
    else:
        check_stats(stats, out.shape[1] - ids.shape[1], depth, total)


STATIC = {"tree_policy": "static", "retrieval_branches": 0}  # the head's fixed tree, nothing else
SETTINGS = {"static": STATIC, "default": {}}  # default: the head config's (adaptive policy + retrieval)


def check_oracle_stats(stats: GenerationStats, n_generated: int) -> None:
    """The oracle's main branch is always accepted whole: rounds of ORACLE_DEPTH + 1 tokens, the last one cut
    to what is left; each tree has ORACLE_DEPTH x (ORACLE_BRANCH distractors + their children + the true token)
    nodes and reaches depth ORACLE_DEPTH + 1 (distractor children only)."""
    per_round = ORACLE_DEPTH + 1
    rounds = -(-(n_generated - 1) // per_round)
    check_stats(stats, n_generated, ORACLE_DEPTH + 1, ORACLE_DEPTH * (2 * ORACLE_BRANCH + 1))
    assert stats.accepted_lengths == [ORACLE_DEPTH] * rounds
    last = [n_generated - 1 - per_round * (rounds - 1)] if rounds else []
    assert stats.new_tokens_per_round == [per_round] * (rounds - 1) + last
    assert stats.tree_sizes == [ORACLE_DEPTH * (2 * ORACLE_BRANCH + 1)] * rounds
    assert stats.position_trials == ([rounds] * (ORACLE_DEPTH + 1) if rounds else [])
    assert stats.position_accepts == ([rounds] * ORACLE_DEPTH + [0] if rounds else [])


@pytest.mark.parametrize("settings", sorted(SETTINGS))
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_random_head_identical_across_archs(arch, attn, settings):
    target = make_target(arch, seed=1, attn=attn)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=12, tree_depth=4, tree_top_k=4)
    for seed, length in [(0, 1), (1, 7), (2, 40)]:  # 40 > gemma3/mistral sliding windows
        ids = _prompt(seed, length)
        ref = target.generate(ids, max_new_tokens=30, do_sample=False)
        out = target.generate(ids, assistant_model=head, max_new_tokens=30, do_sample=False, **SETTINGS[settings])
        assert torch.equal(out, ref), f"{arch}/{attn} prompt {seed}: tree output differs from plain generate"
        check_head_stats(head, ids, out, total=12, depth=4, top_k=4)


@pytest.mark.parametrize("fs,pad,layers", [(False, False, 1), (True, False, 1), (False, True, 1), (True, True, 3)])
def test_head_variants_identical(fs, pad, layers):
    target = make_target("llama", seed=3)
    head = FSPADDraftModel.from_target(
        target, feature_sampling=fs, partial_alignment=pad, num_draft_layers=layers, positions_per_layer=1,
        tree_total_tokens=16, tree_depth=5, tree_top_k=4,
    )
    for seed in range(4):
        ids = _prompt(10 + seed, 5 + 3 * seed)
        ref = target.generate(ids, max_new_tokens=25, do_sample=False)
        for settings in SETTINGS.values():
            out = target.generate(ids, assistant_model=head, max_new_tokens=25, do_sample=False, **settings)
            assert torch.equal(out, ref)
            check_head_stats(head, ids, out, total=16, depth=5, top_k=4)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_oracle_long_acceptances_identical(arch):
    target = make_target(arch, seed=2)
    for seed in range(3):
        ids = _prompt(20 + seed, 6 + 9 * seed)
        full = target.generate(ids, max_new_tokens=80, do_sample=False)
        oracle = OracleDrafter(full, depth=ORACLE_DEPTH, branch=ORACLE_BRANCH, seed=seed)
        out, stats = oracle_generate(target, ids, oracle, max_new_tokens=40, do_sample=False)
        assert torch.equal(out, full[:, : ids.shape[1] + 40])
        check_oracle_stats(stats, 40)  # 1 + 6 rounds x 6 tokens + a last round cut to 3


def test_oracle_uses_full_depth_and_stops_mid_path():
    target = make_target("llama", seed=4)
    ids = _prompt(5, 8)
    full = target.generate(ids, max_new_tokens=60, do_sample=False)
    for max_new in (1, 2, 5, 6, 7, 13):  # rounds give 6 tokens: limits fall inside accepted paths
        ref = target.generate(ids, max_new_tokens=max_new, do_sample=False)
        out, stats = oracle_generate(target, ids, OracleDrafter(full, depth=ORACLE_DEPTH), max_new_tokens=max_new,
                                     do_sample=False)
        assert torch.equal(out, ref), max_new
        # e.g. max_new 5: one round, 5 accepted, 4 emitted; max_new 13: two whole rounds; max_new 1: none
        check_oracle_stats(stats, max_new)


def test_oracle_eos_inside_accepted_path():
    target = make_target("qwen2", seed=5)
    ids = _prompt(6, 10)
    full = target.generate(ids, max_new_tokens=60, do_sample=False)
    gen = full[0, ids.shape[1]:]
    for pos in (3, 8, 14):  # EOS = a token the target emits there (first occurrence wins)
        eos = int(gen[pos])
        ref = target.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=eos)
        out, stats = oracle_generate(target, ids, OracleDrafter(full, depth=ORACLE_DEPTH), max_new_tokens=60,
                                     do_sample=False, eos_token_id=eos)
        assert torch.equal(out, ref)
        assert out[0, -1].item() == eos and out.shape[1] < full.shape[1]
        n_generated = out.shape[1] - ids.shape[1]
        assert n_generated == 1 + int((gen == eos).nonzero()[0])
        check_oracle_stats(stats, n_generated)  # the last round accepts its whole path, emits up to the EOS
    # several EOS ids
    eos_ids = [int(gen[9]), int(gen[4])]
    ref = target.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=eos_ids)
    out, stats = oracle_generate(target, ids, OracleDrafter(full, depth=ORACLE_DEPTH), max_new_tokens=60,
                                 do_sample=False, eos_token_id=eos_ids)
    assert torch.equal(out, ref)
    check_oracle_stats(stats, out.shape[1] - ids.shape[1])


def test_oracle_acceptance_is_long():
    """The oracle's main branch is always accepted: every round emits depth + 1 tokens."""
    target = make_target("llama", seed=7)
    ids = _prompt(7, 9)
    full = target.generate(ids, max_new_tokens=70, do_sample=False)
    out, stats = oracle_generate(target, ids, OracleDrafter(full, depth=ORACLE_DEPTH), max_new_tokens=49,
                                 do_sample=False)
    assert torch.equal(out, full[:, : ids.shape[1] + 49])
    assert stats.accepted_lengths == [5] * 8  # 1 prefill token + 8 rounds x 6 tokens = 49
    assert stats.new_tokens_per_round == [6] * 8
    assert stats.mean_accepted_length == 6.0
    assert stats.acceptance_per_position == [1.0] * 5 + [0.0]  # depth 6 holds only distractors
    assert stats.summary()["new_tokens"] == 49 and stats.summary()["target_forwards"] == 9
