"""EAGLE-1/2 interop: import the published layout, check it against a reference EAGLE forward, export for engines."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from conftest import make_target
from fspad_hf import FSPADDraftModel
from fspad_hf.interop import ExportRefused, export_eagle, load_eagle

# --------------------------------------------------------------------------- reference EAGLE-1/2 forward
# Written from the published EAGLE code's description (SafeAILab/EAGLE eagle/model/cnets1.py `Model`):
# z = fc(cat(embed(x_{t+1}), f_t)); one Llama decoder layer whose input norm is skipped (layer index 0):
# h = z + attn(z); o = h + mlp(post_attention_norm(h)); no final norm; logits = target.lm_head(o).


def eagle_config_for(target) -> dict:
    t = target.config
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads, "num_hidden_layers": 1, "vocab_size": t.vocab_size,
        "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
        "rope_theta": t.rope_parameters["rope_theta"], "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


class ReferenceEagle(nn.Module):
    def __init__(self, cfg: dict, bias: bool):
        super().__init__()
        lc = LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
        lc._attn_implementation = "eager"
        self.embed_tokens = nn.Embedding(lc.vocab_size, lc.hidden_size)
        self.fc = nn.Linear(2 * lc.hidden_size, lc.hidden_size, bias=bias)
        layer = LlamaDecoderLayer(lc, layer_idx=0)
        layer.input_layernorm = nn.Identity()  # the EAGLE first layer has no input norm
        self.layers = nn.ModuleList([layer])
        self.rotary = LlamaRotaryEmbedding(config=lc)

    def eagle_state_dict(self) -> dict:
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()
                if "input_layernorm" not in k and not k.startswith("rotary")}

    def forward(self, input_ids, hidden_states):
        z = self.fc(torch.cat([self.embed_tokens(input_ids), hidden_states], dim=-1))
        T = z.shape[1]
        pos = torch.arange(T)[None]
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        out = self.layers[0](z, attention_mask=mask, position_ids=pos, position_embeddings=self.rotary(z, pos))
        return out[0] if isinstance(out, tuple) else out


def write_eagle(folder, target, seed, fmt="safetensors", bias=True, config_bias=None):
    torch.manual_seed(seed)
    cfg = eagle_config_for(target)
    ref = ReferenceEagle(cfg, bias=bias)
    for p in ref.parameters():
        nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        ref.embed_tokens.weight.copy_(target.get_input_embeddings().weight)  # a copy of the target's, as published
    ref.eval()
    if config_bias is not None:
        cfg["bias"] = config_bias
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = ref.eagle_state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return ref


def target_features(target, ids):
    with torch.no_grad():
        return target.model(input_ids=ids).last_hidden_state  # post final norm, as EaModel feeds the head


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imported_head_matches_reference_forward(tmp_path, fmt, seed):
    target = make_target("llama", attn="eager")
    ref = write_eagle(tmp_path / "eagle", target, seed, fmt=fmt)
    head = load_eagle(tmp_path / "eagle", target=target)
    assert not head.config.feature_sampling and not head.config.partial_alignment
    g = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(0, 96, (1, 12), generator=g)
    f = target_features(target, ids[:, :-1])
    x_next = ids[:, 1:]
    with torch.no_grad():
        expected = ref(x_next, f)
        out = head(input_ids=x_next, hidden_states=f)
    torch.testing.assert_close(out.regress_hidden, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, target.lm_head(expected), atol=1e-5, rtol=1e-5)


def test_no_fc_bias_and_config_bias_false(tmp_path):
    target = make_target("llama")
    ref = write_eagle(tmp_path / "nob", target, 3, bias=False, config_bias=False)
    head = load_eagle(tmp_path / "nob", target=target)
    assert torch.count_nonzero(head.fusion.fc.bias) == 0
    ids = torch.randint(0, 96, (1, 8))
    f = target_features(target, ids[:, :-1])
    with torch.no_grad():
        torch.testing.assert_close(head(input_ids=ids[:, 1:], hidden_states=f).regress_hidden, ref(ids[:, 1:], f), atol=1e-5, rtol=1e-5)


def test_imported_head_is_lossless_in_generate(tmp_path):
    target = make_target("llama")
    write_eagle(tmp_path / "eagle", target, 4, fmt="bin")
    head = load_eagle(tmp_path / "eagle", target=target)
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(7))
    plain = target.generate(ids, max_new_tokens=24, do_sample=False)
    fast = target.generate(ids, assistant_model=head, max_new_tokens=24, do_sample=False)
    assert torch.equal(plain, fast)


def test_import_without_target_then_bind(tmp_path):
    target = make_target("llama")
    ref = write_eagle(tmp_path / "eagle", target, 5)
    head = load_eagle(tmp_path / "eagle")
    assert head.get_input_embeddings() is None
    head.bind_target(target)
    ids = torch.randint(0, 96, (1, 6))
    f = target_features(target, ids[:, :-1])
    with torch.no_grad():
        torch.testing.assert_close(head(input_ids=ids[:, 1:], hidden_states=f).regress_hidden, ref(ids[:, 1:], f), atol=1e-5, rtol=1e-5)


def test_import_refuses_mismatched_target_and_wrong_layouts(tmp_path):
    write_eagle(tmp_path / "eagle", make_target("llama"), 0)
    with pytest.raises(ValueError, match="hidden_size"):
        load_eagle(tmp_path / "eagle", target=make_target("llama", hidden_size=48))
    bad = tmp_path / "bad"
    write_eagle(bad, make_target("llama"), 0)
    from safetensors.torch import load_file, save_file

    state = load_file(str(bad / "model.safetensors"))
    state["layers.0.input_layernorm.weight"] = torch.ones(32)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="input_layernorm"):
        load_eagle(bad)
    with pytest.raises(FileNotFoundError):
        load_eagle(tmp_path / "missing")


def test_converted_folder_loads_and_pickle_folder_still_refused(tmp_path):
    target = make_target("llama")
    write_eagle(tmp_path / "eagle", target, 6, fmt="bin")
    with pytest.raises(ValueError, match="not an FSPAD draft head"):
        FSPADDraftModel.from_pretrained(tmp_path / "eagle")  # an EAGLE folder is not a head folder
    pickled = tmp_path / "pickled"
    load_eagle(tmp_path / "eagle").save_pretrained(pickled)
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="only pickle"):
        FSPADDraftModel.from_pretrained(pickled)  # a head folder with only pytorch_model.bin: still refused
    from fspad_hf.cli import main

    main(["convert", "--from", "eagle", str(tmp_path / "eagle"), "--output", str(tmp_path / "head")])
    saved = FSPADDraftModel.from_pretrained(tmp_path / "head").bind_target(target)
    direct = load_eagle(tmp_path / "eagle", target=target)
    ids = torch.randint(0, 96, (1, 7))
    f = target_features(target, ids[:, :-1])
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids[:, 1:], hidden_states=f).logits, direct(input_ids=ids[:, 1:], hidden_states=f).logits)


# --------------------------------------------------------------------------- export


def eagle2_head(target, seed=0, **kw):
    torch.manual_seed(seed)
    return FSPADDraftModel.from_target(target, feature_sampling=False, partial_alignment=False, **kw)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_export_import_round_trip(tmp_path, engine):
    target = make_target("llama")
    head = eagle2_head(target)
    if engine == "vllm":
        with torch.no_grad():
            head.fusion.fc.bias.zero_()  # vLLM's EAGLE fc has no bias
    folder = export_eagle(head, tmp_path / engine, engine=engine)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["model_type"] == "llama"
    assert cfg["architectures"] == (["LlamaForCausalLM"] if engine == "vllm" else ["LlamaForCausalLMEagle"])
    from safetensors.torch import load_file

    keys = set(load_file(str(folder / "model.safetensors")))
    layer = {f"layers.0.{p}.weight" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "post_attention_layernorm")}
    expected = {"fc.weight"} | layer | ({"embed_tokens.weight"} if engine == "vllm" else {"fc.bias"})
    assert keys == expected
    back = load_eagle(folder, target=target)
    mine, theirs = head.state_dict(), back.state_dict()
    assert set(mine) == set(theirs)
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    ids = torch.randint(0, 96, (1, 9))
    f = target_features(target, ids[:, :-1])
    with torch.no_grad():
        assert torch.equal(head(input_ids=ids[:, 1:], hidden_states=f).logits, back(input_ids=ids[:, 1:], hidden_states=f).logits)
    plain = target.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(target.generate(ids, assistant_model=back, max_new_tokens=12, do_sample=False), plain)


def test_export_vllm_refuses_nonzero_fc_bias_unless_dropped(tmp_path):
    target = make_target("llama")
    head = eagle2_head(target)
    with torch.no_grad():
        head.fusion.fc.bias.fill_(0.1)
    with pytest.raises(ExportRefused, match="fc bias"):
        export_eagle(head, tmp_path / "v", engine="vllm")
    folder = export_eagle(head, tmp_path / "v", engine="vllm", drop_fc_bias=True)
    assert json.loads((folder / "config.json").read_text())["bias"] is False


@pytest.mark.parametrize("kw, why", [
    (dict(feature_sampling=True, partial_alignment=False), "Feature Sampling"),
    (dict(feature_sampling=False, partial_alignment=True), "Partial Alignment"),
    (dict(feature_sampling=False, partial_alignment=False, num_draft_layers=3, positions_per_layer=2), "PosS"),
    (dict(feature_sampling=False, partial_alignment=False, draft_vocab_size=40), "reduced vocabulary"),
])
def test_export_refuses_what_engines_cannot_run(tmp_path, kw, why):
    head = FSPADDraftModel.from_target(make_target("llama"), **kw)
    for engine in ("vllm", "sglang"):
        with pytest.raises(ExportRefused, match=why) as info:
            export_eagle(head, tmp_path / engine, engine=engine)
        assert "no such layer" in str(info.value)
    assert not (tmp_path / "vllm").exists()


def test_export_refuses_non_llama_layers_and_unbound_vllm(tmp_path):
    with pytest.raises(ExportRefused, match="'qwen2' layer"):
        export_eagle(eagle2_head(make_target("qwen2")), tmp_path / "q", engine="sglang")
    target = make_target("llama")
    head = FSPADDraftModel(eagle2_head(target).config)  # unbound
    with torch.no_grad():
        head.fusion.fc.bias.zero_()
    with pytest.raises(ValueError, match="bind_target"):
        export_eagle(head, tmp_path / "u", engine="vllm")
