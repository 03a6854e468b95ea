"""Greedy tree decoding is token-identical to plain generate() (float32)."""

import pytest
import torch

from fspad_hf import FSPADDraftModel
from tests.conftest import ARCHS, OracleDrafter, generate_with_oracle, make_target


def _prompt(seed: int, length: int, vocab: int = 96) -> torch.LongTensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_random_head_identical_across_archs(arch, attn):
    target = make_target(arch, seed=1, attn=attn)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=12, tree_depth=4, tree_top_k=4)
    for seed, length in [(0, 1), (1, 7), (2, 40)]:  # 40 > gemma3/mistral sliding windows
        ids = _prompt(seed, length)
        ref = target.generate(ids, max_new_tokens=30, do_sample=False)
        out = target.generate(ids, assistant_model=head, max_new_tokens=30, do_sample=False)
        assert torch.equal(out, ref), f"{arch}/{attn} prompt {seed}: tree output differs from plain generate"


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
        assert torch.equal(target.generate(ids, assistant_model=head, max_new_tokens=25, do_sample=False), ref)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_oracle_long_acceptances_identical(arch):
    target = make_target(arch, seed=2)
    for seed in range(3):
        ids = _prompt(20 + seed, 6 + 9 * seed)
        full = target.generate(ids, max_new_tokens=80, do_sample=False)
        oracle = OracleDrafter(full, depth=5, seed=seed)
        ref = target.generate(ids, max_new_tokens=40, do_sample=False)
        out = generate_with_oracle(target, ids, oracle, max_new_tokens=40, do_sample=False)
        assert torch.equal(out, ref)


def test_oracle_uses_full_depth_and_stops_mid_path():
    target = make_target("llama", seed=4)
    ids = _prompt(5, 8)
    full = target.generate(ids, max_new_tokens=60, do_sample=False)
    from fspad_hf.decoding.stats import GenerationStats
    from fspad_hf.decoding.generation import run_tree_decoding  # noqa: F401
    for max_new in (1, 2, 5, 6, 7, 13):  # rounds give 6 tokens: limits fall inside accepted paths
        ref = target.generate(ids, max_new_tokens=max_new, do_sample=False)
        out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=max_new, do_sample=False)
        assert torch.equal(out, ref), max_new
    assert GenerationStats  # imported for clarity of what the stats object is


def test_oracle_eos_inside_accepted_path():
    target = make_target("qwen2", seed=5)
    ids = _prompt(6, 10)
    full = target.generate(ids, max_new_tokens=60, do_sample=False)
    gen = full[0, ids.shape[1]:]
    for pos in (3, 8, 14):  # EOS = a token the target emits there (first occurrence wins)
        eos = int(gen[pos])
        ref = target.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=eos)
        out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=60, do_sample=False, eos_token_id=eos)
        assert torch.equal(out, ref)
        assert out[0, -1].item() == eos and out.shape[1] < full.shape[1]
    # several EOS ids
    eos_ids = [int(gen[9]), int(gen[4])]
    ref = target.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=eos_ids)
    out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=60, do_sample=False, eos_token_id=eos_ids)
    assert torch.equal(out, ref)


def test_oracle_acceptance_is_long():
    """The oracle's main branch is always accepted: every round emits depth + 1 tokens."""
    from fspad_hf.decoding.generation import run_tree_decoding
    from fspad_hf.decoding.stats import GenerationStats

    target = make_target("llama", seed=7)
    ids = _prompt(7, 9)
    full = target.generate(ids, max_new_tokens=70, do_sample=False)
    stats = GenerationStats()

    def decode(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False, streamer=None, **kw):
        return run_tree_decoding(model, input_ids, OracleDrafter(full, depth=5), logits_processor, stopping_criteria,
                                 generation_config, streamer, stats)

    out = target.generate(ids, custom_generate=decode, max_new_tokens=49, do_sample=False)
    assert torch.equal(out, full[:, : ids.shape[1] + 49])
    assert stats.accepted_lengths == [5] * 8  # 1 prefill token + 8 rounds x 6 tokens = 49
    assert stats.mean_accepted_length == 6.0
    assert stats.acceptance_per_position[:5] == [1.0] * 5  # depth 6 holds only distractors


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_runs_and_mostly_identical(arch):
    """In bf16 batched vs single-token forwards differ slightly; report the identity, require it high."""
    target = make_target(arch, seed=8, dtype=torch.bfloat16)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=3, tree_top_k=3)
    same = 0
    for seed in range(4):
        ids = _prompt(30 + seed, 12)
        ref = target.generate(ids, max_new_tokens=20, do_sample=False)
        out = target.generate(ids, assistant_model=head, max_new_tokens=20, do_sample=False)
        assert out.shape[1] == ref.shape[1]
        same += int(torch.equal(out, ref))
    assert same >= 2, f"bf16 identity {same}/4"
