"""KV-cache compaction and head save/load."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel
from transformers.cache_utils import DynamicCache

from fspad_hf import FSPADConfig, FSPADDraftModel
from fspad_hf.decoding.cache import compact_cache
from fspad_hf.decoding.drafter import TreeDrafter
from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.decoding.generation import target_forward, tree_mask
from fspad_hf.decoding.tree import DraftTree, ancestor_mask
from tests.conftest import make_target


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compacted_cache_equals_fresh_forward(arch):
    target = make_target(arch, seed=0)
    ctx = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(0))
    parents = torch.tensor([0, 0, 1, 1, 3, 2])
    depth = torch.tensor([1, 1, 2, 2, 3, 2])
    tree = DraftTree(tokens=torch.tensor([5, 6, 7, 8, 9, 10]), parents=parents, depth=depth,
                     ancestors=ancestor_mask(parents, 3))
    cache = DynamicCache()
    target_forward(target, ctx[:, :-1], cache)  # context; the root is ctx[-1]
    n = ctx.shape[1] - 1
    positions = n + torch.cat([torch.zeros(1, dtype=torch.long), depth])
    ids = torch.cat([ctx[0, -1:], tree.tokens])[None]
    feats, _ = target_forward(target, ids, cache, tree_mask(target.config, tree, n, positions, torch.float32), positions[None])
    path = torch.tensor([0, 1, 3, 5])  # root -> slot 1 (token 5) -> slot 3 (7) -> slot 5 (9): not contiguous
    compact_cache(cache, n, path)
    fresh = DynamicCache()
    accepted = torch.cat([ctx, torch.tensor([[5, 7, 9]])], dim=1)
    fresh_feats, _ = target_forward(target, accepted, fresh)
    for mine, ref in zip(cache.layers, fresh.layers):
        assert mine.keys.shape == ref.keys.shape
        torch.testing.assert_close(mine.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values, ref.values, atol=1e-5, rtol=1e-5)
    # the tree forward's features along the path are the features of the accepted sequence
    torch.testing.assert_close(feats[:, path], fresh_feats[:, n:], atol=1e-5, rtol=1e-5)


def _tree_of(head, target, ids):
    gen = TreeDrafter(head, TreeSettings(12, 4, 3))
    feats, _ = target_forward(target, ids[:, :-1], DynamicCache())
    gen.observe(feats)
    return gen.draft(ids)


@pytest.mark.parametrize("draft_vocab", [None, 40])
def test_save_load_round_trip_identical_drafts(tmp_path, draft_vocab):
    target = make_target("qwen2", seed=1)
    head = FSPADDraftModel.from_target(target, num_draft_layers=2, positions_per_layer=2, draft_vocab_size=draft_vocab)
    if draft_vocab:
        head.d2t.copy_(torch.randperm(96)[:draft_vocab])
        head.bind_target(target)
    head.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert not any("embed" in k or "lm_head" in k for k in weights), "target embedding/LM head must not be saved"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "fspad"
    loaded = FSPADDraftModel.from_pretrained(tmp_path)  # no target needed to load
    assert loaded.config.num_draft_layers == 2 and loaded.config.target_config["model_type"] == "qwen2"
    loaded.bind_target(target)
    ids = torch.randint(0, 96, (1, 17), generator=torch.Generator().manual_seed(3))
    a, b = _tree_of(head, target, ids), _tree_of(loaded, target, ids)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, FSPADDraftModel)
    # static tree, no retrieval: the adaptive policy decides from measured round times, so its rounds (and their
    # accepted lengths) depend on the machine's load, not only on the weights this test compares
    fixed = dict(max_new_tokens=20, do_sample=False, tree_policy="static", retrieval_branches=0)
    out1 = target.generate(ids, assistant_model=head, **fixed)
    out2 = target.generate(ids, assistant_model=auto, **fixed)
    assert torch.equal(out1, out2)
    assert head.last_generation_stats.accepted_lengths == auto.last_generation_stats.accepted_lengths


def test_parameter_counts_match_method():
    target = make_target("llama")
    h, i = 32, 64
    sizes = {}
    for fs in (False, True):
        for pad in (False, True):
            head = FSPADDraftModel.from_target(target, feature_sampling=fs, partial_alignment=pad)
            sizes[(fs, pad)] = sum(p.numel() for p in head.parameters())
    assert sizes[(True, False)] - sizes[(False, False)] == 3 * h * i + h  # FS: W_g, W_u, W_d + RMSNorm
    assert sizes[(False, True)] - sizes[(False, False)] == h * i  # PAD: down-proj I -> 2H
    assert sizes[(True, True)] - sizes[(False, False)] == 4 * h * i + h


def test_pad_halves_are_separate_outputs():
    target = make_target("llama")
    head = FSPADDraftModel.from_target(target, partial_alignment=True)
    out = head(torch.randint(0, 96, (2, 6)), torch.randn(2, 6, 32))
    assert out.predict_hidden.shape == out.regress_hidden.shape == (2, 6, 32)
    assert not torch.allclose(out.predict_hidden, out.regress_hidden)
    assert out.logits.shape == (2, 6, 96)
    eagle = FSPADDraftModel.from_target(target, feature_sampling=False, partial_alignment=False)
    out = eagle(torch.randint(0, 96, (1, 4)), torch.randn(1, 4, 32))
    assert torch.equal(out.predict_hidden, out.regress_hidden)


def test_poss_specialist_mapping():
    cfg = FSPADConfig(num_draft_layers=4, positions_per_layer=2)
    assert [cfg.specialist_for_position(p) for p in range(1, 11)] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert FSPADConfig(num_draft_layers=1).specialist_for_position(7) == 0
    with pytest.raises(ValueError):
        cfg.specialist_for_position(0)
    assert FSPADConfig(feature_sampling=False, partial_alignment=False).method_name == "EAGLE-2"
    assert cfg.method_name == "FSPAD+PosS-2"


def test_loading_a_state_dict_with_another_draft_vocab_refreshes_the_draft_lm_head():
    """Trainer resume / init_from load d2t into a bound head: its draft logits must follow the new d2t."""
    target = make_target("llama", seed=3)
    head = FSPADDraftModel.from_target(target, draft_vocab_size=16)  # bound, d2t = 0..15
    other = FSPADDraftModel.from_target(target, draft_vocab_size=16)
    other.set_draft_vocab(torch.arange(80, 96))
    head.load_state_dict(other.state_dict())
    x = torch.randn(1, 3, head.config.hidden_size)
    expected = target.lm_head(x)[..., 80:96]  # the target's own logits of the new draft tokens
    assert torch.allclose(head.draft_logits(x), expected, atol=1e-5)
