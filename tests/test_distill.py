"""Tests for fspad_hf.training.distill: regenerating assistant turns with the target (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import fspad_hf.training.distill as distill
from fspad_hf.training.data import load_conversations
from fspad_hf.training.distill import read_done_ids, regenerate_conversations, stop_token_ids
from tests.conftest import make_target

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]

CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi! how are you?"},
     {"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four."}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a haiku"},
     {"role": "assistant", "content": "the sea, the sea"}],
    [{"role": "user", "content": "the quick brown fox"}, {"role": "assistant", "content": "jumps"},
     {"role": "user", "content": "over?"}],  # trailing unanswered user turn
    [{"role": "user", "content": "how are you today?"}, {"role": "assistant", "content": "fine"}],
    [{"role": "user", "content": "quick question"}, {"role": "assistant", "content": "sure"},
     {"role": "user", "content": "two?"}, {"role": "assistant", "content": "yes"},
     {"role": "user", "content": "four?"}, {"role": "assistant", "content": "no"}],
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with a ChatML template and no pad token (eos is used for padding)."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    base.train_from_iterator([m["content"] for c in CONVERSATIONS for m in c] * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=base, eos_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def target(tokenizer):
    return make_target("llama", vocab_size=len(tokenizer))


def read_jsonl(path) -> dict[int, list[dict]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return {r["id"]: r["messages"] for r in records}


def reference_answer(target, tokenizer, history: list[dict], max_new_tokens: int) -> str:
    """What plain greedy `generate` answers for this history (batch of one, no padding)."""
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    stops = stop_token_ids(tokenizer, target)
    out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                          pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(out) if t in stops), len(out))
    return tokenizer.decode(out[:end], skip_special_tokens=True)


def check_regenerated(target, tokenizer, source: list[dict], written: list[dict], max_new_tokens: int) -> None:
    """User/system turns unchanged, each assistant turn equal to greedy generate given the new history."""
    assert [m["role"] for m in written] == [m["role"] for m in source[: len(written)]]
    for i, message in enumerate(written):
        if message["role"] == "assistant":
            assert message["content"] == reference_answer(target, tokenizer, written[:i], max_new_tokens)
        else:
            assert message == source[i]


def test_stop_tokens(tokenizer, target):
    eos, end_of_turn = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert stop_token_ids(tokenizer, target) == sorted({eos, end_of_turn})


def test_regenerates_assistant_turns_greedy(tokenizer, target, tmp_path):
    out = regenerate_conversations(target, tokenizer, CONVERSATIONS, tmp_path / "d.jsonl",
                                   max_new_tokens=6, batch_size=2)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None  # restored
    records = read_jsonl(out)
    assert sorted(records) == list(range(len(CONVERSATIONS)))
    for cid, messages in records.items():
        check_regenerated(target, tokenizer, CONVERSATIONS[cid], messages, 6)
        originals = [m["content"] for m in CONVERSATIONS[cid] if m["role"] == "assistant"]
        assert [m["content"] for m in messages if m["role"] == "assistant"] != originals[: len(originals)]
    assert records[2][-1]["role"] == "assistant" and len(records[2]) == 2  # trailing user turn dropped
    assert len(records[4]) == 6
    # the output is valid training data for load_conversations
    loaded, stats = load_conversations(out)
    assert stats.kept == len(CONVERSATIONS) and stats.skipped == 0


def test_generation_stops_at_a_stop_token(tokenizer, tmp_path):
    target = make_target("llama", vocab_size=len(tokenizer))
    prompt = CONVERSATIONS[3][:1]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    greedy = target.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    stop = greedy[3]
    target.generation_config.eos_token_id = stop  # the target's own eos is a stop token
    out = regenerate_conversations(target, tokenizer, CONVERSATIONS[3:5], tmp_path / "d.jsonl",
                                   max_new_tokens=8, batch_size=2)
    answer = read_jsonl(out)[0][1]["content"]
    assert answer == tokenizer.decode(greedy[: greedy.index(stop)], skip_special_tokens=True)
    check_regenerated(target, tokenizer, CONVERSATIONS[4], read_jsonl(out)[1], 8)


def test_resume_skips_done_ids_and_drops_truncated_line(tokenizer, target, tmp_path, monkeypatch):
    full = regenerate_conversations(target, tokenizer, CONVERSATIONS, tmp_path / "full.jsonl",
                                    max_new_tokens=5, batch_size=3)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2], encoding="utf-8")  # killed mid-write
    done = {json.loads(line)["id"] for line in lines[:2]}

    records, dropped = read_done_ids(partial)
    assert dropped and set(records) == done
    assert partial.read_text(encoding="utf-8") == "".join(lines[:2])  # partial line cut off

    partial.write_text("".join(lines[:2]) + lines[2][:-1], encoding="utf-8")  # missing only its newline
    generated: list[str] = []
    original = distill._generate

    def spy(target_, tokenizer_, prompts, *args):
        generated.extend(tokenizer_.decode(p) for p in prompts)
        return original(target_, tokenizer_, prompts, *args)

    monkeypatch.setattr(distill, "_generate", spy)
    regenerate_conversations(target, tokenizer, CONVERSATIONS, partial, max_new_tokens=5, batch_size=3)
    assert read_jsonl(partial) == read_jsonl(full)
    done_users = {CONVERSATIONS[i][0]["content"] for i in done if CONVERSATIONS[i][0]["role"] == "user"}
    assert generated and not any(u in p for p in generated for u in done_users)

    generated.clear()
    regenerate_conversations(target, tokenizer, CONVERSATIONS, partial, max_new_tokens=5)
    assert generated == []  # all done


def test_long_prompts_are_skipped_or_truncated(tokenizer, target, tmp_path):
    first_len = len(tokenizer(tokenizer.apply_chat_template(CONVERSATIONS[4][:1], tokenize=False,
                                                            add_generation_prompt=True))["input_ids"])
    out = regenerate_conversations(target, tokenizer, [CONVERSATIONS[4], [{"role": "user", "content": "x " * 200},
                                                                          {"role": "assistant", "content": "y"}]],
                                   tmp_path / "d.jsonl", max_new_tokens=4, max_prompt_tokens=first_len + 6)
    records = read_jsonl(out)
    assert list(records) == [0]  # the long one is skipped
    assert [m["role"] for m in records[0]] == ["user", "assistant"]  # the second prompt was too long


def test_sampling_is_deterministic_given_seed(tokenizer, target, tmp_path):
    kwargs = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.99, batch_size=2)
    a = regenerate_conversations(target, tokenizer, CONVERSATIONS, tmp_path / "a.jsonl", seed=3, **kwargs)
    b = regenerate_conversations(target, tokenizer, CONVERSATIONS, tmp_path / "b.jsonl", seed=3, **kwargs)
    c = regenerate_conversations(target, tokenizer, CONVERSATIONS, tmp_path / "c.jsonl", seed=4, **kwargs)
    assert read_jsonl(a) == read_jsonl(b) != read_jsonl(c)


def test_refuses_output_of_a_different_input(tokenizer, target, tmp_path):
    out = regenerate_conversations(target, tokenizer, CONVERSATIONS[:2], tmp_path / "d.jsonl", max_new_tokens=3)
    with pytest.raises(ValueError, match="new out_path"):
        regenerate_conversations(target, tokenizer, CONVERSATIONS[2:], out, max_new_tokens=3)
