"""generate() integration: options, routes, statistics, and clear errors."""

import logging
import warnings

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer
from transformers.cache_utils import DynamicCache, StaticCache

import fspad_hf
import fspad_hf.decoding.generation as generation
from fspad_hf import FSPADDraftModel
from fspad_hf.compat import GENERATE_CACHE_FIELD, GENERATE_CACHE_KWARGS, cache_kwargs
from fspad_hf.training.objective import DraftObjective
from tests.conftest import OracleDrafter, generate_with_oracle, make_target


@pytest.fixture(scope="module")
def pair():
    target = make_target("llama", seed=21)
    return target, FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3)


IDS = torch.tensor([[5, 17, 3, 44, 2, 9]])


def test_custom_generate_route_without_patch_semantics(pair):
    target, head = pair
    ref = target.generate(IDS, max_new_tokens=20, do_sample=False)
    out = target.generate(IDS, custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="draft_model"):
        target.generate(IDS, custom_generate=fspad_hf.tree_generate, max_new_tokens=5)


def test_per_call_tree_settings_and_stats(pair):
    target, head = pair
    target.generate(IDS, assistant_model=head, max_new_tokens=15, do_sample=False, tree_total_tokens=5, tree_depth=2,
                    tree_top_k=2, tree_policy="static", retrieval_branches=0)
    stats = head.last_generation_stats
    assert max(stats.tree_sizes) <= 5 and len(stats.acceptance_per_position) <= 2
    assert stats.settings.total_tokens == 5 and stats.settings.top_k == 2
    summary = stats.summary()
    assert summary["new_tokens"] == 15 and summary["target_forwards"] == stats.num_rounds + 1
    assert summary["tau"] >= 1.0 and summary["draft_ms_per_round"] > 0
    target.generate(IDS, assistant_model=head, max_new_tokens=15, do_sample=False)
    settings = head.last_generation_stats.settings  # back to the head's config: adaptive + retrieval by default
    assert (settings.total_tokens, settings.policy, settings.retrieval_branches) == (10, "adaptive", 4)


def test_return_dict_scores_match_plain(pair):
    target, head = pair
    kw = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True)
    ref = target.generate(IDS, **kw)
    out = target.generate(IDS, assistant_model=head, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores) == 12 and len(out.logits) == 12
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_streamer_prints_prompt_and_all_tokens(pair):
    target, head = pair

    class Collect(TextStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.chunks.append("END")

    streamer = Collect()
    out = target.generate(IDS, assistant_model=head, max_new_tokens=10, do_sample=False, streamer=streamer)
    assert streamer.chunks[0] == IDS[0].tolist() and streamer.chunks[-1] == "END"
    streamed = [t for chunk in streamer.chunks[1:-1] for t in chunk]
    assert streamed == out[0, IDS.shape[1]:].tolist()


def test_custom_stopping_criteria_inside_accepted_path():
    target = make_target("llama", seed=22)
    full = target.generate(IDS, max_new_tokens=40, do_sample=False)
    stop_tok = int(full[0, IDS.shape[1] + 9])

    class StopOn(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == stop_tok

    ref = target.generate(IDS, max_new_tokens=40, do_sample=False, stopping_criteria=StoppingCriteriaList([StopOn()]))
    out = generate_with_oracle(target, IDS, OracleDrafter(full, depth=5), max_new_tokens=40, do_sample=False,
                               stopping_criteria=StoppingCriteriaList([StopOn()]))
    assert torch.equal(out, ref) and out.shape[1] < full.shape[1]


def test_prefix_dependent_processors_stay_identical(pair):
    target, head = pair
    kw = dict(max_new_tokens=20, do_sample=False, repetition_penalty=1.3, min_new_tokens=5, no_repeat_ngram_size=3)
    assert torch.equal(target.generate(IDS, assistant_model=head, **kw), target.generate(IDS, **kw))


def test_other_assistants_keep_stock_behaviour():
    target = make_target("llama", seed=23)
    assistant = make_target("llama", seed=24, num_hidden_layers=1)
    ref = target.generate(IDS, max_new_tokens=10, do_sample=False)
    assert torch.equal(target.generate(IDS, assistant_model=assistant, max_new_tokens=10, do_sample=False), ref)
    assert torch.equal(target.generate(IDS, prompt_lookup_num_tokens=3, max_new_tokens=10, do_sample=False), ref)
    with pytest.raises(ValueError, match="only valid with assistant_model"):
        target.generate(IDS, max_new_tokens=3, tree_depth=2)


# ------------------------------------------------------------------------------------ errors
def test_batch_beams_return_sequences_static_cache_padding(pair):
    target, head = pair
    with pytest.raises(ValueError, match="batch size 1"):
        target.generate(IDS.repeat(2, 1), assistant_model=head, max_new_tokens=3)
    with pytest.raises(ValueError, match="beam search"):
        target.generate(IDS, assistant_model=head, max_new_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        target.generate(IDS, assistant_model=head, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    with pytest.raises(ValueError, match="dynamic cache"):
        target.generate(IDS, assistant_model=head, max_new_tokens=3, cache_implementation="static")
    mask = torch.ones_like(IDS)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padded"):
        target.generate(IDS, attention_mask=mask, assistant_model=head, max_new_tokens=3)


def test_head_target_mismatch_errors():
    target = make_target("llama", seed=25)
    other_hidden = make_target("llama", seed=25, hidden_size=48, num_attention_heads=4)
    other_vocab = make_target("llama", seed=25, vocab_size=80)
    other_arch = make_target("qwen2", seed=25)
    head = FSPADDraftModel.from_target(target)
    with pytest.raises(ValueError, match="hidden_size"):
        other_hidden.generate(IDS, assistant_model=head, max_new_tokens=3)
    with pytest.raises(ValueError, match="vocab_size"):
        other_vocab.generate(torch.tensor([[1, 2, 3]]), assistant_model=head, max_new_tokens=3)
    with pytest.raises(ValueError, match="qwen2"):
        other_arch.generate(IDS, assistant_model=head, max_new_tokens=3)


def test_head_for_another_named_target_warns(caplog):
    target = make_target("llama", seed=26)
    head = FSPADDraftModel.from_target(target)
    head.config.target_name_or_path = "someone/another-model"
    with caplog.at_level(logging.WARNING, logger="fspad_hf"):
        target.name_or_path = "my/model"
        out = target.generate(IDS, assistant_model=head, max_new_tokens=5, do_sample=False)
    assert "another-model" in caplog.text and out.shape[1] == IDS.shape[1] + 5


def test_config_field_errors():
    with pytest.raises(ValueError, match="tree_depth"):
        fspad_hf.FSPADConfig(tree_total_tokens=3, tree_depth=5)
    with pytest.raises(ValueError, match="num_draft_layers"):
        fspad_hf.FSPADConfig(num_draft_layers=0)
    with pytest.raises(ValueError, match="target_config lacks"):
        fspad_hf.FSPADConfig(target_config={"hidden_size": 8})


def test_unbound_head_and_empty_prompt(pair):
    target, _ = pair
    head = FSPADDraftModel(FSPADDraftModel.from_target(target).config)
    with pytest.raises(RuntimeError, match="bind_target"):
        head(torch.tensor([[1]]), torch.zeros(1, 1, 32))
    with pytest.raises(ValueError):
        target.generate(torch.zeros(1, 0, dtype=torch.long), assistant_model=head, max_new_tokens=3)


@pytest.mark.parametrize("name", GENERATE_CACHE_KWARGS)
def test_user_cache_is_refused_under_every_name(pair, name):
    """A static or already filled cache would be silently ignored; it must be refused whatever it is called.

    transformers 5.24 renamed the cache keyword to `cache` (the old name still works, with a warning).
    """
    target, head = pair
    with pytest.raises(ValueError, match="DynamicCache, got StaticCache"):
        target.generate(IDS, assistant_model=head, max_new_tokens=3, **{name: StaticCache(config=target.config, max_cache_len=64)})
    filled = DynamicCache()
    target(input_ids=IDS, use_cache=True, **cache_kwargs(filled))
    assert filled.get_seq_length() == IDS.shape[1]
    with pytest.raises(ValueError, match="already holds"):
        target.generate(IDS, assistant_model=head, max_new_tokens=3, **{name: filled})
    with pytest.raises(ValueError, match="already holds"):
        target.generate(IDS, custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=3, **{name: filled})


def test_our_calls_raise_no_deprecation_warning(pair, caplog):
    """On releases that renamed the cache keyword, every call we make uses the current name."""
    target, head = pair
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="transformers"):
        warnings.simplefilter("always")
        out = target.generate(IDS, assistant_model=head, max_new_tokens=12, return_dict_in_generate=True)
        assert getattr(out, GENERATE_CACHE_FIELD) is not None
        objective = DraftObjective(head).train()
        objective(IDS, torch.randn(1, IDS.shape[1], head.config.hidden_size), torch.ones_like(IDS), unroll_steps=2)
        head.eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    deprecated = [m for m in messages if "deprecat" in m.lower()]
    assert not deprecated, deprecated


def test_loads_turn_hub_kernels_off_only_when_the_kernels_package_is_unusable(pair, monkeypatch, tmp_path):
    """transformers >= 5.25 defaults `use_kernels` on and raises when `kernels` is missing or out of range:
    our head loads then pass use_kernels=False (the caller's own choice always wins)."""
    import fspad_hf.compat as compat

    monkeypatch.setattr(compat, "is_kernels_available", lambda: False)
    assert compat.load_kwargs({"dtype": "x"}) == {"dtype": "x", "use_kernels": False}
    assert compat.load_kwargs({"use_kernels": True}) == {"use_kernels": True}
    _, head = pair
    head.save_pretrained(tmp_path / "head")
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)  # the load itself must not need the test env's switch
    loaded = FSPADDraftModel.from_pretrained(tmp_path / "head")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), head.state_dict().values()))
    monkeypatch.setattr(compat, "is_kernels_available", lambda: True)
    assert compat.load_kwargs({"dtype": "x"}) == {"dtype": "x"}


def test_prefill_computes_logits_for_the_last_prompt_row_only(pair, monkeypatch):
    """Plain generate() keeps only the last prompt row's logits; the tree loop must not pay for the rest."""
    target, head = pair
    rows = []
    original = generation.target_logits

    def counting(model, features):
        rows.append(features.shape[0])
        return original(model, features)

    monkeypatch.setattr(generation, "target_logits", counting)
    prompt = torch.randint(0, 96, (1, 40))
    out = target.generate(prompt, assistant_model=head, max_new_tokens=6)
    assert rows[0] == 1, rows  # prefill: one row, not 40
    assert all(r == n + 1 for r, n in zip(rows[1:], head.last_generation_stats.tree_sizes)), rows
    assert torch.equal(out, target.generate(prompt, max_new_tokens=6))
