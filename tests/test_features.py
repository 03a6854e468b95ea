"""Tests for fspad_hf.training.features: target features, resumable offline extraction, the offline dataset."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from safetensors.torch import load_file

import fspad_hf.training.features as features
from fspad_hf.head.storage import from_rowwise_int8, rowwise_int8
from fspad_hf.training.batches import collate
from fspad_hf.training.features import (
    FORMAT_VERSION,
    INT8_FORMAT_VERSION,
    MANIFEST_NAME,
    OfflineFeatureDataset,
    extract_features,
    feature_tokens,
    load_feature_sets,
    read_manifest,
    target_features,
)
from tests.conftest import make_target


def make_examples(n: int = 7, vocab: int = 96, seed: int = 0) -> list[dict[str, list[int]]]:
    """Random tokenised examples of varying lengths (as tokenize_conversation returns them)."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(3, 20, (1,), generator=gen))
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        mask = torch.randint(0, 2, (length,), generator=gen).tolist()
        examples.append({"input_ids": ids, "loss_mask": mask})
    return examples


def fresh_features(target, ids: list[int]) -> torch.Tensor:
    """Reference features of one example: a plain decoder forward."""
    with torch.no_grad():
        return target.get_decoder()(torch.tensor([ids])).last_hidden_state[0]  # [T, H]


@pytest.fixture(scope="module")
def llama():
    return make_target("llama")


@pytest.fixture
def counting(monkeypatch):
    """Record the example ranges whose shards are computed."""
    calls: list[int] = []
    original = features._compute_shard

    def wrapped(target, examples, *args, **kwargs):
        calls.append(len(examples))
        return original(target, examples, *args, **kwargs)

    monkeypatch.setattr(features, "_compute_shard", wrapped)
    return calls


def shard_tensors(out_dir) -> list[dict[str, torch.Tensor]]:
    manifest = read_manifest(out_dir)
    return [load_file(str(out_dir / e["file"])) for e in manifest["shards"]]


def assert_same_shards(a, b) -> None:
    ta, tb = shard_tensors(a), shard_tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


# ------------------------------------------------------------------------------------------------
# target_features
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_target_features_are_post_norm_last_hidden_state(arch):
    target = make_target(arch)
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(1))
    feats = target_features(target, ids)
    assert feats.shape == (2, 11, 32) and not feats.requires_grad
    with torch.no_grad():
        direct = target.get_decoder()(ids).last_hidden_state
        logits = target(ids).logits
    torch.testing.assert_close(feats, direct, rtol=0, atol=0)
    # exactly what the LM head consumes
    torch.testing.assert_close(target.get_output_embeddings()(feats), logits, rtol=1e-5, atol=1e-5)


def test_target_features_right_padding_matches_unpadded(llama):
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    feats = target_features(llama, ids, mask)
    torch.testing.assert_close(feats[1, :5], fresh_features(llama, ids[1, :5].tolist()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[0], fresh_features(llama, ids[0].tolist()), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# extraction + dataset
# ------------------------------------------------------------------------------------------------


def test_roundtrip_exact_tokens_and_features(llama, tmp_path, caplog):
    examples = make_examples(7)
    with caplog.at_level("INFO", logger="fspad_hf.training.features"):
        out = extract_features(llama, examples, tmp_path / "f", shard_size=3)
    total = sum(len(e["input_ids"]) for e in examples)
    assert f"{total} tokens x (H=32 x 2 bytes + 0)" in caplog.text  # size estimate logged
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, *(f"shard-0000{i}.safetensors" for i in range(3))]

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["num_examples"] == 7 and manifest["total_tokens"] == total
    assert manifest["dtype"] == "bfloat16"
    assert manifest["target"]["model_type"] == "llama"
    assert (manifest["target"]["hidden_size"], manifest["target"]["vocab_size"]) == (32, 96)
    assert [(e["start"], e["end"]) for e in manifest["shards"]] == [(0, 3), (3, 6), (6, 7)]
    raw = load_file(str(out / "shard-00001.safetensors"))
    assert raw["input_ids"].dtype == torch.int32 and raw["loss_mask"].dtype == torch.uint8
    assert raw["offsets"].dtype == torch.int64 and raw["offsets"].tolist()[0] == 0
    assert raw["hidden_states"].shape == (raw["offsets"][-1], 32)

    dataset = OfflineFeatureDataset(out, verify="sha256")
    assert len(dataset) == 7 and dataset.hidden_size == 32
    assert dataset.example_lengths() == [len(e["input_ids"]) for e in examples]
    for example, item in zip(examples, (dataset[i] for i in range(7))):
        assert item["input_ids"].dtype == torch.long and item["input_ids"].tolist() == example["input_ids"]
        assert item["loss_mask"].dtype == torch.long and item["loss_mask"].tolist() == example["loss_mask"]
        expected = fresh_features(llama, example["input_ids"]).to(torch.bfloat16)
        assert item["hidden_states"].dtype == torch.bfloat16 and torch.equal(item["hidden_states"], expected)
    assert torch.equal(dataset[-1]["input_ids"], dataset[6]["input_ids"])
    with pytest.raises(IndexError):
        dataset[7]
    clone = pickle.loads(pickle.dumps(dataset))  # DataLoader workers
    assert torch.equal(clone[4]["hidden_states"], dataset[4]["hidden_states"])


def test_batched_extraction_float32_and_collate(llama, tmp_path):
    examples = make_examples(5, seed=3)
    out = extract_features(llama, examples, tmp_path / "f", shard_size=4, dtype=torch.float32, batch_size=3)
    dataset = OfflineFeatureDataset(out, max_open_shards=1)
    for i, example in enumerate(examples):
        torch.testing.assert_close(dataset[i]["hidden_states"], fresh_features(llama, example["input_ids"]),
                                   rtol=1e-5, atol=1e-5)
    batch = collate([dataset[0], dataset[1]], pad_token_id=7)
    n0, n1 = (len(examples[i]["input_ids"]) for i in (0, 1))
    width = max(n0, n1)
    assert batch["hidden_states"].shape == (2, width, 32) and batch["input_ids"].shape == (2, width)
    short = 0 if n0 < n1 else 1
    n = min(n0, n1)
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (width - n)
    assert batch["input_ids"][short, n:].eq(7).all() and batch["loss_mask"][short, n:].eq(0).all()
    assert batch["hidden_states"][short, n:].eq(0).all()
    assert torch.equal(batch["hidden_states"][short, :n], dataset[short]["hidden_states"])


def test_int8_storage_halves_the_disk_and_dequantizes_within_its_rounding_bound(llama, tmp_path, caplog):
    examples = make_examples(6, seed=5)
    bf16 = extract_features(llama, examples, tmp_path / "bf16", shard_size=3)
    with caplog.at_level("INFO", logger="fspad_hf.training.features"):
        int8 = extract_features(llama, examples, tmp_path / "int8", shard_size=3, dtype=torch.int8)
    total = sum(len(e["input_ids"]) for e in examples)
    assert f"{total} tokens x (H=32 x 1 bytes + 4)" in caplog.text
    exact = torch.cat([fresh_features(llama, e["input_ids"]) for e in examples])  # [N_tok, H]
    error_sq = sum(float((from_rowwise_int8(*rowwise_int8(x[None]), torch.float32) - x).square().sum()) for x in exact)
    rms, error = (exact.square().mean() ** 0.5).item(), (error_sq / exact.numel()) ** 0.5
    assert 0 < error < rms / 100  # the measured rounding, logged and kept in the manifest
    logged = re.search(r"rounding error RMS ([0-9.]+), ([0-9.]+)% of the features' RMS ([0-9.]+)", caplog.text)
    assert logged, caplog.text
    assert [float(v) for v in logged.groups()] == pytest.approx([error, 100 * error / rms, rms], rel=0.01, abs=1e-4)
    manifest = read_manifest(int8)
    assert manifest["dtype"] == "int8" and manifest["format_version"] == INT8_FORMAT_VERSION
    assert read_manifest(bf16)["format_version"] == FORMAT_VERSION  # float sets stay readable by older releases
    raw = load_file(str(int8 / "shard-00000.safetensors"))
    assert raw["hidden_states"].dtype == torch.int8 and raw["hidden_scale"].dtype == torch.float32
    assert raw["hidden_scale"].shape == (raw["hidden_states"].shape[0],)  # one scale per token
    assert raw["hidden_states"].abs().amax(dim=1).eq(127).all()  # each token uses its full range
    size = {name: sum(e["bytes"] for e in read_manifest(d)["shards"]) for name, d in [("bf16", bf16), ("int8", int8)]}
    assert size["int8"] < 0.75 * size["bf16"], size  # H=32 here: (32 + 4) / 64 plus the shared token columns

    dataset = OfflineFeatureDataset(int8, verify="sha256")
    for example, item in zip(examples, (dataset[i] for i in range(len(examples)))):
        assert item["input_ids"].tolist() == example["input_ids"]
        exact = fresh_features(llama, example["input_ids"])  # [T, H] float32
        bound = exact.abs().amax(dim=1, keepdim=True) / 254 + 1e-6  # half a quantization step per token
        assert item["hidden_states"].dtype == torch.float32
        assert ((item["hidden_states"] - exact).abs() <= bound).all()
        assert not torch.equal(item["hidden_states"], exact)  # it is quantized, not a float copy
    mixed = load_feature_sets([bf16, int8], target=llama)  # int8 and bf16 sets mix in one run
    batch = collate([mixed[0], mixed[len(examples)]], pad_token_id=0)
    assert batch["hidden_states"].dtype == torch.bfloat16 and batch["hidden_states"].shape[0] == 2


def test_unsupported_storage_dtype_and_newer_format_are_refused(llama, tmp_path):
    with pytest.raises(ValueError, match="storage dtype torch.int16 is not supported; use one of bfloat16.*int8"):
        extract_features(llama, make_examples(2), tmp_path / "f", dtype=torch.int16)
    out = extract_features(llama, make_examples(2), tmp_path / "g", dtype=torch.int8)
    manifest = read_manifest(out)
    manifest["format_version"] = 99
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unsupported feature format 99.*upgrade fspad-hf or re-extract"):
        OfflineFeatureDataset(out)


def test_resume_after_crash_computes_only_missing_shards(llama, tmp_path, monkeypatch, counting):
    examples = make_examples(7)
    reference = extract_features(llama, examples, tmp_path / "ref", shard_size=2)
    counting.clear()

    original = features._compute_shard  # the counting wrapper
    def crash_on_third(target, shard_examples, *args, **kwargs):
        if len(counting) == 2:
            raise RuntimeError("simulated crash")
        return original(target, shard_examples, *args, **kwargs)

    monkeypatch.setattr(features, "_compute_shard", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(llama, examples, tmp_path / "run", shard_size=2)
    manifest = read_manifest(tmp_path / "run")
    assert not manifest["complete"] and [e["index"] for e in manifest["shards"]] == [0, 1]
    with pytest.raises(ValueError, match="not a complete"):
        OfflineFeatureDataset(tmp_path / "run")

    monkeypatch.setattr(features, "_compute_shard", original)
    counting.clear()
    extract_features(llama, examples, tmp_path / "run", shard_size=2)
    assert counting == [2, 1]  # shards 2 and 3 only
    assert_same_shards(reference, tmp_path / "run")
    assert read_manifest(tmp_path / "run")["complete"]

    counting.clear()
    extract_features(llama, examples, tmp_path / "run", shard_size=2)  # everything done: no work
    assert counting == []


def test_corrupt_or_missing_shard_is_detected_and_redone(llama, tmp_path, counting):
    examples = make_examples(6)
    out = extract_features(llama, examples, tmp_path / "f", shard_size=2)
    reference = {k: v.clone() for k, v in load_file(str(out / "shard-00001.safetensors")).items()}
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        OfflineFeatureDataset(out, verify="sha256")
    (out / "shard-00002.safetensors").write_bytes(b"short")
    with pytest.raises(ValueError, match="shard-00002.safetensors"):
        OfflineFeatureDataset(out)  # size check by default

    counting.clear()
    extract_features(llama, examples, out, shard_size=2)
    assert counting == [2, 2]  # shards 1 and 2 recomputed, shard 0 kept
    restored = load_file(str(shard))
    assert all(torch.equal(restored[k], reference[k]) for k in reference)
    OfflineFeatureDataset(out, verify="sha256")

    (out / "shard-00000.safetensors").unlink()
    counting.clear()
    extract_features(llama, examples, out, shard_size=2)
    assert counting == [2]


def test_mismatched_manifest_is_an_error_naming_the_fix(llama, tmp_path):
    examples = make_examples(4)
    out = extract_features(llama, examples, tmp_path / "f", shard_size=2)
    for other, kwargs in [
        (make_target("llama", hidden_size=48), {}),  # different hidden size
        (make_target("qwen2"), {}),  # different model type
        (make_target("llama", seed=1), {}),  # same shapes, different weights
        (llama, {"dtype": torch.float16}),
    ]:
        with pytest.raises(ValueError, match=r"new out_dir.*overwrite=True"):
            extract_features(other, examples, out, shard_size=2, **kwargs)
    with pytest.raises(ValueError, match="num_examples"):
        extract_features(llama, examples[:3], out, shard_size=2)
    changed = [dict(e) for e in examples]
    changed[0] = {"input_ids": changed[0]["input_ids"][::-1], "loss_mask": changed[0]["loss_mask"]}
    with pytest.raises(ValueError, match="data_sha256"):
        extract_features(llama, changed, out, shard_size=2)

    qwen = make_target("qwen2")
    extract_features(qwen, examples[:3], out, shard_size=2, overwrite=True)
    manifest = read_manifest(out)
    assert manifest["target"]["model_type"] == "qwen2" and manifest["num_examples"] == 3
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_several_feature_sets_concatenate_and_are_checked_against_the_target(llama, tmp_path):
    first, second = make_examples(3, seed=1), make_examples(4, seed=2)
    a = extract_features(llama, first, tmp_path / "a", shard_size=2)
    b = extract_features(llama, second, tmp_path / "b", shard_size=3)
    both = load_feature_sets(f"{a}, {b}", llama)
    assert len(both) == 7
    for i, example in enumerate(first + second):
        assert both[i]["input_ids"].tolist() == example["input_ids"]
        assert torch.allclose(both[i]["hidden_states"].float(), fresh_features(llama, example["input_ids"]), atol=2e-2)
    with pytest.raises(ValueError, match=r"different target.*re-extract"):
        load_feature_sets(str(a), make_target("llama", seed=1))  # same shapes, other weights
    c = extract_features(make_target("qwen2"), first, tmp_path / "c", shard_size=2)
    with pytest.raises(ValueError, match="different targets"):
        load_feature_sets([a, c])
    with pytest.raises(ValueError, match="no feature directory"):
        load_feature_sets(" , ")


def test_feature_tokens_match_examples_without_reading_hidden_states(llama, tmp_path, monkeypatch):
    first, second = make_examples(3, seed=1), make_examples(4, seed=2)
    both = load_feature_sets([extract_features(llama, first, tmp_path / "a", shard_size=2),
                              extract_features(llama, second, tmp_path / "b", shard_size=3)])
    single = OfflineFeatureDataset(tmp_path / "b")
    examples = first + second
    order = [6, 0, 3, 2, 5]
    read = []
    for ds in both.datasets + [single]:  # record which tensors are read from the shards
        original = ds._shard
        def spy(k, original=original):
            handle, offsets = original(k)
            class Handle:
                def get_slice(self, name):
                    read.append(name)
                    return handle.get_slice(name)
            return Handle(), offsets
        monkeypatch.setattr(ds, "_shard", spy)
    rows = list(feature_tokens(both, order))
    assert [r["input_ids"].tolist() for r in rows] == [examples[i]["input_ids"] for i in order]
    assert [r["loss_mask"].tolist() for r in rows] == [examples[i]["loss_mask"] for i in order]
    assert [r["input_ids"].tolist() for r in feature_tokens(single, [1, 3])] == [second[1]["input_ids"], second[3]["input_ids"]]
    assert read and "hidden_states" not in read
    with pytest.raises(TypeError, match="OfflineFeatureDataset"):
        list(feature_tokens([first], [0]))


def test_invalid_examples_and_missing_manifest(llama, tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        extract_features(llama, [{"input_ids": [1, 2], "loss_mask": [1]}], tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="extract_features"):
        OfflineFeatureDataset(tmp_path / "nothing")
