"""Bad input gives a clear error naming the problem and the fix (complements tests/test_generate_api.py).

Covered here: heads for another target (incl. the tokenizer fingerprint), broken head folders (missing,
corrupt or truncated files, pickle-only checkpoints, remote-code entries), bad config fields, bad
generate() requests not covered elsewhere, and empty / malformed training data.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import pytest
import torch
from transformers import AutoModel

import fspad_hf
from fspad_hf import FSPADConfig, FSPADDraftModel
from fspad_hf.training.chat_masks import tokenize_conversation
from fspad_hf.training.data import load_conversations
from fspad_hf.head.loading import CorruptCheckpointError
from tests.conftest import make_target, tiny_chat_tokenizer

IDS = torch.tensor([[5, 17, 3, 44, 2, 9]])


@pytest.fixture(scope="module")
def target():
    return make_target("llama", seed=70)


@pytest.fixture(scope="module")
def saved_head(target, tmp_path_factory):
    """A head folder saved once; tests copy it before damaging it."""
    folder = tmp_path_factory.mktemp("head")
    FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3).save_pretrained(folder)
    return folder


@pytest.fixture
def head_copy(saved_head, tmp_path):
    folder = tmp_path / "head"
    shutil.copytree(saved_head, folder)
    return folder


def edit_config(folder, **changes) -> None:
    """Rewrite the folder's config.json with keys changed (None = removed)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle (torch.load / pickle.load) while loading a head."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle file was opened while loading a head")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


# ------------------------------------------------------------------------------------ head vs target
@pytest.mark.parametrize("override,named", [
    ({"hidden_size": 48}, "hidden_size=32"),
    ({"vocab_size": 80}, "vocab_size=96"),
])
def test_loaded_head_refuses_another_target_shape(saved_head, override, named):
    head = FSPADDraftModel.from_pretrained(saved_head)
    other = make_target("llama", seed=70, **override)
    with pytest.raises(ValueError, match=named) as error:
        head.bind_target(other)
    assert "from_target" in str(error.value), "the message should name the fix"


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_loaded_head_refuses_another_architecture(saved_head, arch):
    head = FSPADDraftModel.from_pretrained(saved_head)
    with pytest.raises(ValueError, match=f"'llama' layers.*'{arch}"):
        head.check_target(make_target(arch, seed=70))


def test_tokenizer_fingerprint_mismatch():
    tokenizer = tiny_chat_tokenizer()
    target = make_target("llama", seed=71, vocab_size=len(tokenizer))
    head = FSPADDraftModel.from_target(target, tokenizer=tokenizer)
    assert head.config.target_tokenizer_fingerprint
    head.bind_target(target, tokenizer)  # same tokenizer: fine
    other = tiny_chat_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match="tokenizer's vocabulary differs") as error:
        head.bind_target(target, other)
    assert "Use the tokenizer" in str(error.value)
    with pytest.raises(ValueError, match="fingerprint"):
        head.check_target(target, other)
    FSPADDraftModel.from_target(target).bind_target(target, other)  # a head without a fingerprint cannot check


# ------------------------------------------------------------------------------------ config fields
@pytest.mark.parametrize("changes,match", [
    ({"target_config": None}, r"config\.json has no 'target_config'"),
    ({"tree_depth": -2}, "tree_depth must be >= 1"),
    ({"tree_total_tokens": 0}, "tree_total_tokens must be >= 1"),
    ({"tree_top_k": -1}, "tree_top_k must be >= 1"),
    ({"tree_total_tokens": 2, "tree_depth": 5}, r"tree_total_tokens \(2\) must be >= tree_depth"),
    ({"num_draft_layers": 0}, "num_draft_layers must be >= 1"),
    ({"draft_vocab_size": 500}, "draft_vocab_size"),
    ({"model_type": "llama"}, "not an FSPAD draft head"),
])
def test_bad_config_fields_in_a_head_folder(head_copy, changes, match):
    edit_config(head_copy, **changes)
    with pytest.raises(ValueError, match=match):
        FSPADDraftModel.from_pretrained(head_copy)


def test_target_config_without_required_keys():
    with pytest.raises(ValueError, match="target_config lacks 'model_type'"):
        FSPADConfig(target_config={"hidden_size": 8, "vocab_size": 10})
    with pytest.raises(ValueError, match="target_config is empty"):
        FSPADDraftModel(FSPADConfig())


def test_target_folder_is_not_a_head(target, tmp_path):
    target.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' model, not an FSPAD draft head"):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_invalid_per_call_tree_settings(target, saved_head):
    head = FSPADDraftModel.from_pretrained(saved_head)
    for bad in ({"tree_depth": 0}, {"tree_top_k": -3}, {"tree_total_tokens": 0}):
        with pytest.raises(ValueError, match="must all be >= 1"):
            target.generate(IDS, assistant_model=head, max_new_tokens=3, **bad)


# ------------------------------------------------------------------------------------ corrupt / truncated files
def _truncate_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


DAMAGES = {
    "truncated_half": _truncate_half,
    "truncated_one_byte": lambda data: data[:-1],
    "empty": lambda data: b"",
    "garbage": lambda data: b"not a safetensors file" * 4,
    "header_byte_flipped": lambda data: data[:12] + bytes([data[12] ^ 0xFF]) + data[13:],
    "extra_bytes": lambda data: data + b"\0" * 16,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("loader", ["FSPADDraftModel", "AutoModel"])
def test_corrupt_or_truncated_weights_name_the_file(head_copy, damage, loader):
    weights = head_copy / "model.safetensors"
    weights.write_bytes(DAMAGES[damage](weights.read_bytes()))
    load = FSPADDraftModel.from_pretrained if loader == "FSPADDraftModel" else AutoModel.from_pretrained
    with pytest.raises(CorruptCheckpointError, match="corrupt or truncated") as error:
        load(head_copy)
    assert str(weights) in str(error.value), f"the error should name the file: {error.value}"


def test_truncated_shard_of_a_sharded_head(target, tmp_path):
    FSPADDraftModel.from_target(target).save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    FSPADDraftModel.from_pretrained(tmp_path)  # intact: loads
    shards[-1].write_bytes(_truncate_half(shards[-1].read_bytes()))
    with pytest.raises(CorruptCheckpointError, match=shards[-1].name):
        FSPADDraftModel.from_pretrained(tmp_path)
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=f"missing.*{shards[-1].name}"):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_corrupt_config_json(head_copy):
    (head_copy / "config.json").write_text('{"model_type": "fspad", "target_con')
    with pytest.raises(CorruptCheckpointError, match=r"config\.json is not valid JSON"):
        FSPADDraftModel.from_pretrained(head_copy)


# ------------------------------------------------------------------------------------ missing files
def test_missing_config(head_copy):
    (head_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        FSPADDraftModel.from_pretrained(head_copy)


def test_missing_weights(head_copy):
    (head_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file .model.safetensors"):
        FSPADDraftModel.from_pretrained(head_copy)


def test_missing_folder(tmp_path):
    for missing in (tmp_path / "nope", str(tmp_path / "nope"), "./no-such-head"):
        with pytest.raises(FileNotFoundError, match="Head folder not found"):
            FSPADDraftModel.from_pretrained(missing)


# ------------------------------------------------------------------------------------ pickle refused
class _SideEffect:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_only_head_is_refused_without_unpickling(head_copy, tmp_path, no_unpickling):
    marker = tmp_path / "unpickled"
    (head_copy / "model.safetensors").unlink()
    with open(head_copy / "pytorch_model.bin", "wb") as handle:
        pickle.dump(_SideEffect(marker), handle)
    for load in (FSPADDraftModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=r"only pickle checkpoint.*pytorch_model\.bin.*safetensors only") as error:
            load(head_copy)
        assert "torch.load(path, weights_only=True)" in str(error.value), "the message should show how to convert"
    assert not marker.exists(), "the pickle was executed"


def test_pickle_next_to_safetensors_is_ignored(head_copy, tmp_path, no_unpickling, caplog):
    marker = tmp_path / "unpickled"
    with open(head_copy / "pytorch_model.bin", "wb") as handle:
        pickle.dump(_SideEffect(marker), handle)
    with caplog.at_level(logging.INFO, logger="fspad_hf"):
        head = FSPADDraftModel.from_pretrained(head_copy)
    assert isinstance(head, FSPADDraftModel) and not marker.exists()
    assert "Ignoring pickle file" in caplog.text


def test_use_safetensors_false_is_refused(head_copy):
    with pytest.raises(ValueError, match="safetensors only"):
        FSPADDraftModel.from_pretrained(head_copy, use_safetensors=False)


def test_remote_code_entry_is_never_run(head_copy, tmp_path, caplog):
    """A config.json with an auto_map pointing at a module in the folder: no code is imported."""
    marker = tmp_path / "imported"
    (head_copy / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom fspad_hf import FSPADDraftModel as EvilModel\n"
    )
    edit_config(head_copy, auto_map={"AutoConfig": "evil.EvilModel", "AutoModel": "evil.EvilModel"})
    with caplog.at_level(logging.WARNING, logger="fspad_hf"):
        direct = FSPADDraftModel.from_pretrained(head_copy)
        auto = AutoModel.from_pretrained(head_copy)  # the registered 'fspad' class wins; no trust_remote_code
    assert type(direct) is FSPADDraftModel and type(auto) is FSPADDraftModel
    assert not marker.exists(), "code from the head folder was executed"
    assert "auto_map" in caplog.text


# ------------------------------------------------------------------------------------ generate() requests
def test_unsupported_attention_implementations(saved_head):
    head = FSPADDraftModel.from_pretrained(saved_head)
    flex = make_target("llama", seed=70)
    flex.set_attn_implementation("flex_attention")  # constructible on CPU, but no arbitrary additive masks
    with pytest.raises(ValueError, match="'sdpa' or 'eager'.*'flex_attention'"):
        flex.generate(IDS, assistant_model=head, max_new_tokens=3)
    fake = make_target("llama", seed=70)
    fake.config._attn_implementation = "my_kernel"
    with pytest.raises(ValueError, match="my_kernel.*attn_implementation='sdpa'"):
        fake.generate(IDS, custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=3)


@pytest.mark.parametrize("bad_token", [96, 1000, -1])
def test_token_ids_outside_the_vocabulary(target, saved_head, bad_token):
    head = FSPADDraftModel.from_pretrained(saved_head)
    ids = torch.tensor([[1, bad_token, 3]])
    with pytest.raises(ValueError, match=r"outside the target's vocabulary \[0, 96\)"):
        target.generate(ids, assistant_model=head, max_new_tokens=3)


def test_empty_prompt_on_both_routes(target, saved_head):
    head = FSPADDraftModel.from_pretrained(saved_head)
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="non-empty prompt"):
        target.generate(empty, assistant_model=head, max_new_tokens=3)
    with pytest.raises(ValueError, match="non-empty prompt"):
        target.generate(empty, custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=3)


def test_inputs_embeds_are_refused_not_ignored(target, saved_head):
    """Plain generate() prefills from inputs_embeds; tree decoding works on ids and must not silently drop them."""
    head = FSPADDraftModel.from_pretrained(saved_head)
    embeds = target.get_input_embeddings()(IDS) + 0.5  # e.g. a soft prompt: not the embedding of IDS
    for kwargs in ({"input_ids": IDS}, {}):
        with pytest.raises(ValueError, match="inputs_embeds.*differ from plain generate"):
            target.generate(inputs_embeds=embeds, assistant_model=head, max_new_tokens=3, **kwargs)


def test_per_token_attentions_and_hidden_states_are_refused(target, saved_head):
    head = FSPADDraftModel.from_pretrained(saved_head)
    for flag in ("output_attentions", "output_hidden_states"):
        with pytest.raises(ValueError, match="output_attentions / output_hidden_states"):
            target.generate(IDS, assistant_model=head, max_new_tokens=3, return_dict_in_generate=True, **{flag: True})


def test_wrong_draft_model_type(target):
    with pytest.raises(TypeError, match="FSPADDraftModel"):
        target.generate(IDS, custom_generate=fspad_hf.tree_generate, draft_model=make_target("llama"), max_new_tokens=3)


def test_batch_and_beams_on_the_custom_generate_route(target, saved_head):
    head = FSPADDraftModel.from_pretrained(saved_head)
    route = dict(custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=3)
    with pytest.raises(ValueError, match="batch size 1"):
        target.generate(IDS.repeat(3, 1), **route)
    with pytest.raises(ValueError, match="beam search"):
        target.generate(IDS, num_beams=3, **route)


# ------------------------------------------------------------------------------------ training data
@pytest.mark.parametrize("name,content", [
    ("empty.json", ""),
    ("empty.jsonl", ""),
    ("empty_array.json", "[]"),
    ("object.json", '{"messages": "not a list"}'),
    ("garbage.json", "hello world"),
    ("no_assistant.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"),
    ("wrong_keys.jsonl", '{"text": "a"}\n{"prompt": "b"}\n'),
])
def test_training_files_without_usable_conversations(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match="No usable conversation") as error:
        load_conversations(path)
    assert name in str(error.value) and "ShareGPT" in str(error.value) and "skipped" in str(error.value)
    assert load_conversations(path, max_conversations=0)[0] == []  # asking for none is not an error


def test_chat_template_without_assistant_markers():
    """A template that renders only the contents (no role markers): the replies are still found and masked."""
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "the lazy dog"},
                {"role": "user", "content": "jumps"}, {"role": "assistant", "content": "over the fox"}]
    out = tokenize_conversation(tokenizer, messages, max_length=128)
    masked = [t for t, m in zip(out["input_ids"], out["loss_mask"]) if m]
    assert tokenizer.decode(masked) == "the lazy dogover the fox", tokenizer.decode(masked)


def _trainer(target, dataset, tmp_path):
    from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments

    args = FSPADTrainingArguments(output_dir=str(tmp_path), max_steps=2, use_cpu=True, disable_tqdm=True,
                                  save_strategy="no", report_to=[])
    return FSPADTrainer(model=FSPADDraftModel.from_target(target), args=args, target=target, train_dataset=dataset)


def test_trainer_needs_a_target(target, tmp_path):
    from fspad_hf.training.trainer import FSPADTrainer

    with pytest.raises(ValueError, match="target="):
        FSPADTrainer(model=FSPADDraftModel.from_target(target), target=None)


def test_trainer_with_an_empty_dataset(target, tmp_path):
    from fspad_hf.training.data import ChatDataset

    with pytest.raises(ValueError, match="empty"):
        _trainer(target, ChatDataset([]), tmp_path).train()


def test_trainer_with_no_assistant_tokens(target, tmp_path):
    data = [{"input_ids": torch.tensor([1, 2, 3, 4]), "loss_mask": torch.zeros(4, dtype=torch.long)}] * 4
    with pytest.raises(ValueError, match="loss_mask"):
        _trainer(target, data, tmp_path).train()


def test_head_folder_files_are_only_json_and_safetensors(saved_head):
    """What save_pretrained writes is data only: nothing that could be executed when loading."""
    assert sorted(os.listdir(saved_head)) == ["config.json", "model.safetensors"]
