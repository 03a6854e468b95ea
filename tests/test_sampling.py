"""Sampling with a draft tree follows the target's distribution (goodness-of-fit tests)."""

import itertools

import pytest
import torch

from fspad_hf import FSPADDraftModel
from tests.conftest import make_target
from tests.test_stress import chi_square_pvalue as _fit  # pooled chi-square, shared with the stress suite

VOCAB = 5
N_TOKENS = 3  # joint law of the first 3 new tokens: 125 outcomes


def exact_joint(target, prompt, temperature, top_p=None):
    """Exact probability of every continuation of N_TOKENS tokens (enumerated target forwards)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    procs = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p else []))
    probs = {}
    for seq in itertools.product(range(VOCAB), repeat=N_TOKENS):
        ids = torch.cat([prompt, torch.tensor([seq])], dim=1)
        with torch.no_grad():
            logits = target(ids).logits[0, prompt.shape[1] - 1 : -1].float()  # [N_TOKENS, V]
        p = 1.0
        for i, tok in enumerate(seq):
            scores = procs(ids[:, : prompt.shape[1] + i], logits[i : i + 1])
            p *= torch.softmax(scores, -1)[0, tok].item()
        probs[seq] = p
    return probs


@pytest.mark.parametrize("temperature,top_p", [(1.0, None), (0.7, 0.8)])
def test_first_tokens_follow_target_distribution(temperature, top_p):
    target = make_target("llama", seed=11, vocab_size=VOCAB, initializer_range=0.2)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=8, tree_depth=3, tree_top_k=2)
    prompt = torch.tensor([[1, 3, 0, 2]])
    probs = exact_joint(target, prompt, temperature, top_p)
    n = 2000
    torch.manual_seed(1234)
    counts, accepted = {}, 0
    kwargs = dict(max_new_tokens=N_TOKENS, do_sample=True, temperature=temperature, top_k=None, top_p=top_p)
    for _ in range(n):
        out = target.generate(prompt, assistant_model=head, **kwargs)
        seq = tuple(out[0, prompt.shape[1]:].tolist())
        counts[seq] = counts.get(seq, 0) + 1
        accepted += sum(head.last_generation_stats.accepted_lengths)
    # The test must exercise acceptance: drafted tokens are accepted often on this tiny vocab.
    assert accepted / n > 0.5, f"too few accepted draft tokens ({accepted / n:.2f} per call)"
    pvalue = _fit(counts, probs, n)
    # Threshold 1e-3: a correct sampler fails 1 run in 1000; a biased one (e.g. always accepting the
    # first child) gives p-values far below it at this n.
    assert pvalue > 1e-3, f"chi-square p={pvalue:.2e}: tree sampling does not match the target"


def test_biased_sampler_is_detected():
    """Sanity check of the test's power: a deliberately biased sampler fails the same test."""
    target = make_target("llama", seed=11, vocab_size=VOCAB, initializer_range=0.2)
    prompt = torch.tensor([[1, 3, 0, 2]])
    probs = exact_joint(target, prompt, 1.0)
    n = 2000
    torch.manual_seed(0)
    counts = {}
    for _ in range(n):  # biased: temperature 0.7 instead of 1.0
        out = target.generate(prompt, max_new_tokens=N_TOKENS, do_sample=True, temperature=0.7, top_k=None)
        seq = tuple(out[0, prompt.shape[1]:].tolist())
        counts[seq] = counts.get(seq, 0) + 1
    assert _fit(counts, probs, n) < 1e-3
