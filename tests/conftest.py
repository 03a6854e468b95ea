"""Tiny randomly initialised targets and a test-only oracle drafter."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from transformers.utils import is_kernels_available

# transformers >= 5.25 loads with Hub kernels on by default and raises when the `kernels` package is missing
# or out of its range (a `--no-deps` install of a release whose `kernels` is not on the registry). The library
# turns them off for its own loads then (compat.load_kwargs); tests that load tiny models through
# transformers' own `from_pretrained` get the same through the release's switch.
if not is_kernels_available():
    os.environ.setdefault("USE_HUB_KERNELS", "0")

from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import fspad_hf  # noqa: F401  (installs the generate() route)
from fspad_hf.decoding.generation import run_tree_decoding
from fspad_hf.decoding.tree import DraftTree, ancestor_mask

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP spin-waiting
# makes them very slow; one thread keeps the suite fast and stable.
torch.set_num_threads(1)

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.3,  # peaky distributions: no argmax near-ties in random models
)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 24}),
    # Gemma-3: hybrid sliding/full layers, small window so long prompts exercise the sliding masks.
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, {"head_dim": 8, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}),
}


@pytest.fixture(autouse=True)
def _private_cost_tables(request, tmp_path_factory, monkeypatch):
    """The adaptive policy (the default) measures cost tables at first use: in tests they go to a private
    folder, never to (or from) the user's cache. test_cost_model.py checks the cache location itself."""
    if request.module.__name__.endswith("test_cost_model"):
        return
    from fspad_hf.decoding.cost_model import CostModel

    folder = tmp_path_factory.getbasetemp() / "cost-tables"
    original = CostModel.for_target.__func__

    def for_target(cls, target, head=None, **kwargs):
        kwargs.setdefault("cache_dir", folder)
        return original(cls, target, head, **kwargs)

    monkeypatch.setattr(CostModel, "for_target", classmethod(for_target))


def make_target(arch: str = "llama", seed: int = 0, attn: str = "sdpa", dtype=torch.float32, **overrides):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    cfg = config_cls(**{**COMMON, **extra, **overrides})
    cfg._attn_implementation = attn
    model = model_cls(cfg).eval().to(dtype)
    model.generation_config.pad_token_id = None
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


@pytest.fixture
def llama():
    return make_target("llama")


class OracleDrafter:
    """Proposes the target's own greedy continuation as the main branch of a tree, with distractor
    siblings and children around it (test-only: long acceptances, full depth, EOS inside paths)."""

    def __init__(self, reference: torch.LongTensor, depth: int, branch: int = 2, vocab: int = 96, seed: int = 0):
        self.ref = reference[0]
        self.depth = depth
        self.branch = branch
        self.vocab = vocab
        self.gen = torch.Generator().manual_seed(seed)

    def feedback(self, tree, path):
        pass

    def observe(self, features):
        pass

    def draft(self, input_ids, max_depth=None) -> DraftTree:
        cur = input_ids.shape[1]
        chain = self.ref[cur : cur + self.depth].tolist()
        tokens, parents, depth = [], [], []
        parent = 0
        for d, tok in enumerate(chain, start=1):
            # distractors first, so the true child is not always the first sibling
            others = [t for t in torch.randperm(self.vocab, generator=self.gen).tolist() if t != tok][: self.branch]
            for o in others:
                tokens.append(o); parents.append(parent); depth.append(d)
                slot = len(tokens)
                # a distractor child under the distractor
                tokens.append((o + 1) % self.vocab); parents.append(slot); depth.append(d + 1)
            tokens.append(tok); parents.append(parent); depth.append(d)
            parent = len(tokens)
        parents_t = torch.tensor(parents)
        depth_t = torch.tensor(depth)
        return DraftTree(
            tokens=torch.tensor(tokens), parents=parents_t, depth=depth_t,
            ancestors=ancestor_mask(parents_t, int(depth_t.max())),
        )


def oracle_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                    synced_gpus=False, streamer=None, oracle=None, **model_kwargs):
    return run_tree_decoding(model, input_ids, oracle, logits_processor, stopping_criteria, generation_config, streamer)


def generate_with_oracle(model, ids, oracle, **kwargs):
    return model.generate(ids, custom_generate=functools.partial(oracle_generate, oracle=oracle), **kwargs)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_tokenizer():
    """A byte-level BPE (trained in-process) with a ChatML template; any text is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 5, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    out.chat_template = CHATML
    return out


def skip_unless_slow_selected(config) -> None:
    """Slow tests run only when the -m expression asks for them (e.g. ``-m slow``)."""
    if "slow" not in (config.getoption("markexpr") or ""):
        pytest.skip("slow; select with -m slow")


@pytest.fixture
def only_if_slow_selected(request):
    skip_unless_slow_selected(request.config)


# The core subset (`pytest -m core`): what must hold on every supported transformers release. CI runs it
# against the floor release; `scripts/check_transformers.sh VERSION` runs it against any release.
CORE_FILES = {
    "test_greedy_identity.py",  # token identity with plain generate()
    "test_sampling.py",  # the sampling law
    "test_cache_and_io.py",  # cache surgery, save / load
    "test_bad_input.py",  # clear errors
    "test_trainer.py",  # training, resume
    "test_generate_api.py",  # generate() routes, cache names, deprecations
    "test_real_targets.py",  # real SmolLM2 identity
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in CORE_FILES:
            item.add_marker(pytest.mark.core)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test (loading must stay local)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
