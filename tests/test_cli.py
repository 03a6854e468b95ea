"""fspad-hf CLI: prepare (self-distillation + offline features) and train, on a tiny local model."""

import json

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.cli import _source_range, main
from tests.conftest import make_target, tiny_chat_tokenizer


def test_source_range_parsing():
    assert _source_range("sharegpt", None) == ("sharegpt", 0, None)
    assert _source_range("a.jsonl:50", None) == ("a.jsonl", 0, 50)
    assert _source_range("sharegpt:2400-2430", 7) == ("sharegpt", 2400, 2430)
    assert _source_range("/x/y.json", 9) == ("/x/y.json", 0, 9)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=60, vocab_size=len(tok))
    target.generation_config.eos_token_id = tok.eos_token_id
    path = tmp_path_factory.mktemp("tiny-target")
    target.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _chat_file(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"the quick fox {i}"}, {"from": "gpt", "value": "jumps over the lazy dog"}]}
            for i in range(12)]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    return path


def test_prepare_then_train_offline_and_online(tiny_model_dir, tmp_path):
    data = _chat_file(tmp_path)
    out = tmp_path / "prep"
    main(["prepare", "--target", str(tiny_model_dir), "--data", str(data), "--output_dir", str(out), "--regenerate",
          "--max_new_tokens", "8", "--batch_size", "4", "--features", "--features_dtype", "float32", "--shard_size", "5"])
    lines = (out / "distilled.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["messages"][0]["role"] == "user"
    assert json.loads((out / "features" / "manifest.json").read_text())["num_examples"] == 12
    common = ["--target", str(tiny_model_dir), "--max_steps", "3", "--per_device_train_batch_size", "4",
              "--save_strategy", "no", "--use_cpu", "--eval_fraction", "0.25", "--disable_tqdm", "true"]
    main(["train", "--features_dir", str(out / "features"), "--method", "eagle2", "--output_dir", str(tmp_path / "off"), *common])
    main(["train", "--data", str(out / "distilled.jsonl"), "--method", "fspad", "--num_draft_layers", "2",
          "--positions_per_layer", "2", "--unroll_steps", "3", "--draft_vocab_size", "64",
          "--output_dir", str(tmp_path / "on"), *common])
    off = FSPADDraftModel.from_pretrained(tmp_path / "off" / "final")
    on = FSPADDraftModel.from_pretrained(tmp_path / "on" / "final")
    assert off.config.method_name == "EAGLE-2" and on.config.method_name == "FSPAD+PosS-2"
    assert on.d2t.shape == (64,)


def test_train_rejects_bad_method_and_empty_data(tiny_model_dir, tmp_path):
    data = _chat_file(tmp_path)
    with pytest.raises(SystemExit, match="--method"):
        main(["train", "--target", str(tiny_model_dir), "--data", str(data), "--method", "medusa",
              "--output_dir", str(tmp_path / "x"), "--max_steps", "1", "--use_cpu"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="No usable conversation"):
        main(["train", "--target", str(tiny_model_dir), "--data", str(empty), "--output_dir", str(tmp_path / "y"),
              "--max_steps", "1", "--use_cpu"])


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "prepare" in capsys.readouterr().out
