"""fspad-hf CLI: prepare (self-distillation + offline features) and train, on a tiny local model."""

import json

import pytest

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


def test_prepare_rejects_an_unknown_feature_dtype_before_loading_data(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="--features_dtype must be one of bfloat16, float16, float32, int8, got 'int4'"):
        main(["prepare", "--target", str(tiny_model_dir), "--data", str(_chat_file(tmp_path)), "--features",
              "--features_dtype", "int4", "--output_dir", str(tmp_path / "prep")])
    assert not (tmp_path / "prep").exists()  # refused before any work (self-distillation can take hours)


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "prepare" in capsys.readouterr().out


def test_bench_runs_one_head_under_several_trees(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head_dir = tmp_path / "head"
    FSPADDraftModel.from_target(target).save_pretrained(head_dir)
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [t]})
                                   for i, (c, t) in enumerate([("qa", "the fox"), ("writing", "lazy dog")])))
    out = tmp_path / "res" / "results.json"
    main(["bench", "--target", str(tiny_model_dir), "--questions", str(questions), "--max_new_tokens", "10",
          "--pld_tokens", "0", "--no_plots", "--output", str(out),
          "--head", f"small={head_dir}@4,2,2", "--head", f"big={head_dir}@12,4,3", "--head", str(head_dir)])
    summary = json.loads(out.read_text())
    assert list(summary["methods"]) == ["baseline", "small", "big", "head"]
    assert all(m["overall"]["identical_to_baseline"] for m in summary["methods"].values())
    records = [json.loads(line) for line in out.with_suffix(".partial.jsonl").read_text().splitlines()]
    trials = {r["method"]: len(r["position_trials"]) for r in records if r["method"] != "baseline"}
    assert trials["small"] == 2 and trials["big"] == 4  # each entry drafted with its own tree depth
    with pytest.raises(SystemExit, match="@TOTAL_TOKENS,DEPTH,TOP_K"):
        main(["bench", "--target", str(tiny_model_dir), "--questions", str(questions), "--head", f"{head_dir}@4,2"])
