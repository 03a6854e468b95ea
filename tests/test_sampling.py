"""Sampling with a draft tree follows the target's law (the one sampling suite).

Every test samples the first N_TOKENS new tokens many times and compares their counts with the exact
joint law of plain sampling (chi-square goodness of fit). The test's power is shown on the decoding
path itself: a biased tree acceptance rule, patched into generation.py, must be rejected by the same
test at the same sample size and seed with which the real rule passes.
"""

from __future__ import annotations

import functools

import pytest
import torch
from scipy.stats import chisquare

import fspad_hf.decoding.generation as generation
from fspad_hf import FSPADDraftModel
from fspad_hf.decoding.verification import Acceptance
from tests.conftest import make_target

VOCAB = 5
N_TOKENS = 3  # joint law of the first 3 new tokens: 125 outcomes
PROMPT = ((1, 3, 0, 2),)
N = 600  # samples per fit; enough for the biased rules below to give p-values far below ALPHA
SEED = 0
ALPHA = 1e-3  # a correct sampler fails one run in a thousand; the seeds are fixed, so the suite is stable


# ------------------------------------------------------------------------------------ the law
@functools.lru_cache(maxsize=None)
def sampling_pair(seed: int = 11):
    """A tiny target whose 5 tokens all have sizeable probability, and a random head (trees of 8 nodes,
    depth 3, two children per node: drafted tokens are accepted often, and rejected often)."""
    target = make_target("llama", seed=seed, vocab_size=VOCAB, initializer_range=0.2)
    return target, FSPADDraftModel.from_target(target, tree_total_tokens=8, tree_depth=3, tree_top_k=2)


def _key(gen_kwargs: dict) -> tuple:
    return tuple(sorted(gen_kwargs.items()))


@functools.lru_cache(maxsize=None)
def exact_joint(key: tuple, n_tokens: int = N_TOKENS) -> dict[tuple, float]:
    """Exact law of the first `n_tokens` sampled tokens, from plain generate()'s own processed scores
    (so every processor is applied exactly as stock sampling applies it)."""
    target, _ = sampling_pair()
    prompt = torch.tensor(PROMPT)
    gen_kwargs = dict(key)

    def next_probs(prefix: tuple[int, ...]) -> torch.Tensor:
        ids = torch.cat([prompt, torch.tensor([prefix], dtype=torch.long).reshape(1, -1)], dim=1)
        out = target.generate(ids, max_new_tokens=1, return_dict_in_generate=True, output_scores=True, **gen_kwargs)
        return torch.softmax(out.scores[0][0].float(), dim=-1)

    probs: dict[tuple, float] = {(): 1.0}
    for _ in range(n_tokens):
        grown = {}
        for prefix, p in probs.items():
            if p == 0.0:
                continue
            step = next_probs(prefix)
            grown.update({prefix + (tok,): p * float(step[tok]) for tok in range(VOCAB)})
        probs = grown
    return probs


def chi_square_pvalue(counts: dict[tuple, int], probs: dict[tuple, float], n: int) -> float:
    """Chi-square goodness of fit, pooling outcomes with expected count < 5; impossible outcomes must not occur."""
    impossible = [seq for seq, c in counts.items() if probs.get(seq, 0.0) == 0.0 and c]
    assert not impossible, f"sampled continuations the target gives probability 0: {impossible}"
    obs, exp, pooled_obs, pooled_exp = [], [], 0, 0.0
    for seq, p in probs.items():
        if p == 0.0:
            continue
        if p * n < 5:
            pooled_obs += counts.get(seq, 0)
            pooled_exp += p * n
        else:
            obs.append(counts.get(seq, 0))
            exp.append(p * n)
    if pooled_exp > 0:
        obs.append(pooled_obs)
        exp.append(pooled_exp)
    scale = sum(obs) / sum(exp)
    return float(chisquare(obs, [e * scale for e in exp]).pvalue)


def tree_sampling_fit(gen_kwargs: dict, n: int = N, seed: int = SEED) -> tuple[float, float]:
    """(chi-square p-value, drafted tokens accepted per call) of `n` tree-sampled continuations."""
    target, head = sampling_pair()
    prompt = torch.tensor(PROMPT)
    kwargs = {"do_sample": True, "top_k": None, **gen_kwargs}
    probs = exact_joint(_key(kwargs))
    torch.manual_seed(seed)
    counts: dict[tuple, int] = {}
    accepted = 0
    for _ in range(n):
        out = target.generate(prompt, assistant_model=head, max_new_tokens=N_TOKENS, **kwargs)
        seq = tuple(out[0, prompt.shape[1] :].tolist())
        counts[seq] = counts.get(seq, 0) + 1
        accepted += sum(head.last_generation_stats.accepted_lengths)
    return chi_square_pvalue(counts, probs, n), accepted / n


def check_sampling_fit(gen_kwargs: dict, n: int = N, seed: int = SEED) -> float:
    """Property: tree sampling's first N_TOKENS follow the exact law of plain sampling."""
    pvalue, accepted = tree_sampling_fit(gen_kwargs, n, seed)
    # The test must exercise acceptance: with 5 tokens, drafted tokens are accepted often.
    assert accepted > 0.3, f"{gen_kwargs}: too few accepted draft tokens ({accepted:.2f} per call) to test anything"
    assert pvalue > ALPHA, f"{gen_kwargs}: chi-square p={pvalue:.2e}, tree sampling does not follow the target's law"
    return pvalue


# ------------------------------------------------------------------------------------ the real rule
T1 = {"temperature": 1.0}
FITS = [
    pytest.param(T1, id="T1"),
    pytest.param({"temperature": 0.7, "top_p": 0.8}, id="T0.7-top_p0.8"),
    # top-k plus a prefix-dependent processor: the penalty is applied per tree node with that node's own prefix
    pytest.param({"temperature": 1.3, "top_k": 3, "repetition_penalty": 1.6}, id="T1.3-top_k3-repetition1.6"),
]


@pytest.mark.parametrize("gen_kwargs", FITS)
def test_first_tokens_follow_target_distribution(gen_kwargs):
    check_sampling_fit(gen_kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("gen_kwargs", [
    {"temperature": 0.6},
    {"temperature": 1.0, "min_p": 0.15},
    {"temperature": 1.5, "top_p": 0.7, "top_k": 4},
    {"temperature": 0.9, "typical_p": 0.8},
    {"temperature": 1.0, "no_repeat_ngram_size": 2},
])
def test_first_tokens_follow_target_distribution_sweep(gen_kwargs, only_if_slow_selected):
    """More processors at 5x the sample size (skipped under `-m core`, which selects this file)."""
    check_sampling_fit(gen_kwargs, n=3000)


# ------------------------------------------------------------------------------------ biased rules
def children_of(tree, slot: int) -> torch.Tensor:
    """Node indices (slot - 1) of the children of `slot` (0 = the root)."""
    return torch.nonzero(tree.parents == slot).flatten()


def patch_biased_acceptance(monkeypatch, rule: str) -> dict[str, int]:
    """Replace the acceptance generation.py calls by a biased one that still emits valid tokens.

    The target's processed scores of the round are captured from `target_choices` (called just before
    `accept` in every round), so a rule can look at the target's distribution at each slot.
    - "bonus_from_full_law": after the walk stops, the bonus is drawn again from the slot's full
      distribution instead of the distribution restricted to non-children (the rejected children are
      not removed from the residual: they are over-produced).
    - "top2_child_accepted": a drafted child is accepted whenever it is among the target's top-2 tokens
      at its parent, even when the target's own draw differs.
    Returns a counter of the biased rule's calls.
    """
    real_choices, real_accept = generation.target_choices, generation.accept
    seen: dict[str, torch.Tensor] = {}
    calls = {"accept": 0}

    def choices(scores, do_sample, generator=None):
        seen["scores"] = scores
        return real_choices(scores, do_sample, generator)

    def bonus_from_full_law(tree, choices):
        calls["accept"] += 1
        acc = real_accept(tree, choices)
        probs = torch.softmax(seen["scores"][acc.path[-1]].float(), dim=-1)
        return Acceptance(path=acc.path, bonus=torch.multinomial(probs, 1)[0])

    def top2_child_accepted(tree, choices):
        calls["accept"] += 1
        choices = choices.clone()
        top2 = seen["scores"].topk(2, dim=-1).indices  # [T + 1, 2]
        for slot in range(tree.num_nodes + 1):
            kids = tree.tokens[children_of(tree, slot)]
            if kids.numel() and not bool((kids == choices[slot]).any()):
                favoured = kids[torch.isin(kids, top2[slot])]
                if favoured.numel():
                    choices[slot] = favoured[0]
        return real_accept(tree, choices)

    monkeypatch.setattr(generation, "target_choices", choices)
    monkeypatch.setattr(generation, "accept", {"bonus_from_full_law": bonus_from_full_law,
                                               "top2_child_accepted": top2_child_accepted}[rule])
    return calls


@pytest.mark.parametrize("rule", ["bonus_from_full_law", "top2_child_accepted"])
def test_biased_acceptance_rule_is_rejected(rule, monkeypatch):
    """The fit's power: the same test, sample size and seed with which the real rule passes
    (test_first_tokens_follow_target_distribution[T1]) reject a biased tree acceptance rule."""
    calls = patch_biased_acceptance(monkeypatch, rule)
    pvalue, accepted = tree_sampling_fit(T1)
    # every call has at least one round (3 new tokens, 1 from the prefill): a patch that misses is loud
    assert calls["accept"] >= N, f"{rule}: the patched rule ran {calls['accept']} times; generation.py's lookup moved?"
    assert accepted > 0.3, f"{rule}: the biased rule was not exercised ({accepted:.2f} accepted tokens per call)"
    assert pvalue < ALPHA, f"{rule}: chi-square p={pvalue:.2e}; the fit test misses a biased acceptance rule"
