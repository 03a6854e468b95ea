"""Compact int8 storage of bundled heads (fspad_hf.head.storage)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from fspad_hf import FSPADDraftModel
from fspad_hf.head.loading import INT8_WEIGHTS_NAME
from fspad_hf.head.storage import SCALE_SUFFIX, dequantize_int8, quantize_int8, save_int8
from tests.conftest import make_target


def test_quantize_round_trip_error_is_within_half_a_step_per_row():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=gen) * torch.linspace(0.01, 3.0, 64)[:, None]  # rows of very different scale
    sd = {"big": w, "norm": torch.rand(128, generator=gen), "ids": torch.arange(5), "small": torch.randn(4, 4)}
    q = quantize_int8(sd)
    assert q["big"].dtype == torch.int8 and q["big" + SCALE_SUFFIX].shape == (64,)
    assert q["big"].abs().max() == 127  # the absmax of every row maps to +-127
    assert torch.equal(q["norm"], sd["norm"]) and torch.equal(q["ids"], sd["ids"]) and torch.equal(q["small"], sd["small"])
    back = dequantize_int8(q, torch.float32)
    assert set(back) == set(sd)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((back["big"] - w).abs() <= step / 2 + 1e-6).all()
    assert back["ids"].dtype == torch.long and dequantize_int8(q, torch.bfloat16)["big"].dtype == torch.bfloat16


@pytest.mark.parametrize("layers,pos", [(1, 1), (2, 2)])
def test_int8_head_loads_halves_the_size_and_stays_lossless(tmp_path, layers, pos):
    target = make_target("qwen2", seed=4)
    head = FSPADDraftModel.from_target(target, num_draft_layers=layers, positions_per_layer=pos, draft_vocab_size=40)
    head.save_pretrained(tmp_path / "float")
    path = save_int8(head, tmp_path / "int8", min_numel=256)  # tiny model: quantise its matrices too
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["config.json", INT8_WEIGHTS_NAME]
    assert path.stat().st_size < 0.6 * (tmp_path / "float" / "model.safetensors").stat().st_size
    assert any(t.dtype == torch.int8 for t in load_file(path).values())

    loaded = FSPADDraftModel.from_pretrained(tmp_path / "int8")
    assert next(loaded.parameters()).dtype == torch.float32 and torch.equal(loaded.d2t, head.d2t)
    assert AutoModel.from_pretrained(tmp_path / "int8", dtype=torch.bfloat16).fusion.fc.weight.dtype == torch.bfloat16
    for name, p in head.state_dict().items():  # every tensor comes back, within its row's quantisation step
        tol = p.abs().amax(dim=-1, keepdim=True) / 254 + 1e-6 if p.dim() == 2 else 1e-6
        assert (loaded.state_dict()[name].float() - p.float()).abs().le(tol).all(), name
    ids = torch.randint(0, 96, (1, 15), generator=torch.Generator().manual_seed(5))
    ref = target.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(target.generate(ids, assistant_model=loaded, max_new_tokens=24, do_sample=False), ref)


def test_int8_file_that_does_not_match_its_config_is_refused(tmp_path):
    target = make_target("llama", seed=2)
    save_int8(FSPADDraftModel.from_target(target), tmp_path)
    stored = load_file(tmp_path / INT8_WEIGHTS_NAME)
    del stored["fusion.fc.weight"]
    from safetensors.torch import save_file

    save_file(stored, str(tmp_path / INT8_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"does not match its config.json.*fusion\.fc\.weight.*save_int8"):
        FSPADDraftModel.from_pretrained(tmp_path)
    (tmp_path / INT8_WEIGHTS_NAME).write_bytes(b"\x00" * 10)
    with pytest.raises(Exception, match="corrupt|truncated|model.int8.safetensors"):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_card_states_the_storage_format():
    from fspad_hf.sharing.hub import build_model_card

    head = FSPADDraftModel.from_target(make_target("llama"))
    card = str(build_model_card(head, weights_storage="stored as int8"))
    assert "| weights dtype | float32 (stored as int8) |" in card
    assert "| weights dtype | float32 |" in str(build_model_card(head))


def test_int8_head_past_the_shard_limit_is_split_and_loads_the_same(tmp_path):
    from fspad_hf.head.loading import INT8_INDEX_NAME
    from fspad_hf.integrity import read_json

    target = make_target("qwen2", seed=4)
    head = FSPADDraftModel.from_target(target, num_draft_layers=2, positions_per_layer=2, draft_vocab_size=40)
    save_int8(head, tmp_path / "one", min_numel=256)
    index = save_int8(head, tmp_path / "shards", min_numel=256, max_shard_bytes=8_000)
    assert index.name == INT8_INDEX_NAME and not (tmp_path / "shards" / INT8_WEIGHTS_NAME).exists()
    shards = sorted(p for p in (tmp_path / "shards").glob("model.int8-*-of-*.safetensors"))
    assert len(shards) > 2 and sorted(set(read_json(index)["weight_map"].values())) == [p.name for p in shards]
    for shard in shards:  # every matrix travels with its scale
        names = set(load_file(shard))
        assert all(n[: -len(SCALE_SUFFIX)] in names for n in names if n.endswith(SCALE_SUFFIX))
    one, split = FSPADDraftModel.from_pretrained(tmp_path / "one"), FSPADDraftModel.from_pretrained(tmp_path / "shards")
    assert all(torch.equal(t, split.state_dict()[n]) for n, t in one.state_dict().items())

    from fspad_hf.head.storage import read_int8, write_int8

    stored = read_int8(tmp_path / "one")  # re-sharding a saved head keeps every stored tensor bit for bit
    write_int8(dict(stored), tmp_path / "one", max_shard_bytes=8_000)
    assert (tmp_path / "one" / INT8_INDEX_NAME).is_file()
    assert all(torch.equal(t, read_int8(tmp_path / "one")[n]) for n, t in stored.items())

    save_int8(head, tmp_path / "shards", min_numel=256)  # saved again in one file: the old shards go
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["config.json", INT8_WEIGHTS_NAME]


def test_int8_shard_missing_is_named(tmp_path):
    save_int8(FSPADDraftModel.from_target(make_target("llama", seed=2)), tmp_path, min_numel=256, max_shard_bytes=8_000)
    victim = sorted(tmp_path.glob("model.int8-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing.*{victim.name}"):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_every_shipped_or_carried_weight_file_fits_a_git_host():
    """Git hosts refuse files over 50 MB (GitHub warns at 50, refuses at 100): bundled heads and milestone carries
    must be saved in shards (save_int8 does it past MAX_SHARD_BYTES)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("src/fspad_hf/heads", "milestones") for p in (root / d).rglob("*.safetensors")]
    too_big = [f"{p.relative_to(root)}: {p.stat().st_size / 1e6:.1f} MB" for p in files if p.stat().st_size > 50e6]
    assert files and not too_big, too_big
