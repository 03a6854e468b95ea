"""EAGLE-3 heads: reference forward, feature collection, lossless decoding, import / export layouts, clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_target
from fspad_hf import FSPADDraftModel
from fspad_hf.decoding.drafter import TreeDrafter
from fspad_hf.decoding.generation import target_forward
from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.head.eagle3 import Eagle3DraftModel
from fspad_hf.interop import ExportRefused, export_eagle, load_eagle3

LAYERS = 8  # default feature layers of an 8-layer target: [1, 3, 4]
DRAFT_VOCAB = 40

# --------------------------------------------------------------------------- reference EAGLE-3 forward
# Written from the published EAGLE-3 code's description (SafeAILab/EAGLE eagle/model/cnets.py `Model.forward`,
# `LlamaDecoderLayeremb`, `topK_genrate`), in plain tensor algebra with no fspad_hf or transformers module:
#   g = fc(cat(low, mid, high))  (skipped when the input is already H wide: a fed-back draft state)
#   u = cat(input_layernorm(embed(x)), hidden_norm(g));  h = g + o_proj(causal_attention(u));
#   o = h + down(silu(gate(post_norm(h))) * up(post_norm(h)));  logits = lm_head(norm(o));  target id = d + d2t[d]


def rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x, pos, theta):
    dim = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = pos[:, None].float() * inv[None]  # [T, D/2]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    half = torch.cat([-x[..., dim // 2:], x[..., : dim // 2]], dim=-1)
    return x * cos[:, None] + half * sin[:, None]  # x: [T, heads, D]


def reference_eagle3(w: dict, cfg: dict, embed: torch.Tensor, tokens: torch.Tensor, hidden: torch.Tensor):
    """One EAGLE-3 pass over a causal sequence: tokens `[T]`, hidden `[T, 3H]` or `[T, H]` -> (o `[T, H]`, logits)."""
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"], cfg["rms_norm_eps"]
    g = hidden @ w["fc.weight"].T if hidden.shape[-1] != cfg["hidden_size"] else hidden
    u = torch.cat([rms(embed[tokens], w["midlayer.input_layernorm.weight"], eps), rms(g, w["midlayer.hidden_norm.weight"], eps)], -1)
    T = u.shape[0]
    q = (u @ w["midlayer.self_attn.q_proj.weight"].T).view(T, nh, hd)
    k = (u @ w["midlayer.self_attn.k_proj.weight"].T).view(T, nkv, hd)
    v = (u @ w["midlayer.self_attn.v_proj.weight"].T).view(T, nkv, hd)
    pos = torch.arange(T)
    q, k = rotate(q, pos, cfg["rope_theta"]), rotate(k, pos, cfg["rope_theta"])
    k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + torch.full((T, T), float("-inf")).triu(1)
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, nh * hd) @ w["midlayer.self_attn.o_proj.weight"].T
    h = g + attn
    z = rms(h, w["midlayer.post_attention_layernorm.weight"], eps)
    o = h + (torch.nn.functional.silu(z @ w["midlayer.mlp.gate_proj.weight"].T) * (z @ w["midlayer.mlp.up_proj.weight"].T)) @ w["midlayer.mlp.down_proj.weight"].T
    return o, rms(o, w["norm.weight"], eps) @ w["lm_head.weight"].T


def eagle3_config(target, draft_vocab=DRAFT_VOCAB, **extra) -> dict:
    t = target.config
    return {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads, "num_hidden_layers": 1, "vocab_size": t.vocab_size,
            "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings, "hidden_act": "silu",
            "rope_theta": t.rope_parameters["rope_theta"], "tie_word_embeddings": False, "draft_vocab_size": draft_vocab,
            **extra}


def random_eagle3_weights(target, seed: int, draft_vocab=DRAFT_VOCAB) -> dict:
    """Random weights in the official layout (midlayer.*, d2t offsets, t2d), std 0.3 for peaky drafts."""
    g = torch.Generator().manual_seed(seed)
    H, I, V = target.config.hidden_size, target.config.intermediate_size, target.config.vocab_size
    nh, nkv = target.config.num_attention_heads, target.config.num_key_value_heads
    hd = H // nh
    shapes = {"fc.weight": (H, 3 * H), "midlayer.self_attn.q_proj.weight": (nh * hd, 2 * H),
              "midlayer.self_attn.k_proj.weight": (nkv * hd, 2 * H), "midlayer.self_attn.v_proj.weight": (nkv * hd, 2 * H),
              "midlayer.self_attn.o_proj.weight": (H, nh * hd), "midlayer.mlp.gate_proj.weight": (I, H),
              "midlayer.mlp.up_proj.weight": (I, H), "midlayer.mlp.down_proj.weight": (H, I), "lm_head.weight": (draft_vocab, H)}
    w = {k: torch.randn(*s, generator=g) * 0.3 for k, s in shapes.items()}
    for name in ("midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight", "norm.weight"):
        w[name] = 1.0 + 0.1 * torch.randn(H, generator=g)
    ids = torch.randperm(V, generator=g)[:draft_vocab].sort().values  # SpecForge keeps the draft ids sorted
    w["d2t"] = ids - torch.arange(draft_vocab)
    w["t2d"] = torch.zeros(V, dtype=torch.bool)
    w["t2d"][ids] = True
    w["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().clone()
    return w


def write_eagle3(folder, target, seed, fmt="safetensors", layout="official", draft_vocab=DRAFT_VOCAB, drop=(), **cfg_extra):
    w = random_eagle3_weights(target, seed, draft_vocab)
    cfg = eagle3_config(target, draft_vocab, **cfg_extra)
    state = {k: v for k, v in w.items() if k not in drop}
    if layout == "speculators":
        state = {k.replace("midlayer.", "layers.0."): v for k, v in state.items()}
        layer = {k: v for k, v in cfg.items() if k not in ("draft_vocab_size", "architectures")}
        cfg = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"], "transformer_layer_config": layer,
               "draft_vocab_size": draft_vocab, "norm_before_residual": False,
               "speculators_config": {"algorithm": "eagle3", "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                      "default_proposal_method": "greedy", "verifier": {"name_or_path": "tiny/target", "architectures": []}},
               **{k: v for k, v in cfg_extra.items() if k == "eagle_aux_hidden_state_layer_ids"}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return w, eagle3_config(target, draft_vocab)


@pytest.fixture(scope="module")
def target():
    return make_target("llama", num_hidden_layers=LAYERS)


# --------------------------------------------------------------------------- the head against the reference
@pytest.mark.parametrize("seed,fmt,layout", [(0, "safetensors", "official"), (1, "pickle", "official"),
                                             (2, "safetensors", "speculators"), (3, "pickle", "speculators")])
def test_imported_head_matches_reference_forward(tmp_path, target, seed, fmt, layout):
    w, cfg = write_eagle3(tmp_path / "src", target, seed, fmt, layout)
    head = load_eagle3(tmp_path / "src", target=target)
    assert isinstance(head, Eagle3DraftModel) and head.config.method_name == "EAGLE-3"
    assert head.target_feature_layers == (1, 3, 4)  # [1, L // 2 - 1, L - 4] for L = 8
    torch.manual_seed(seed)
    tokens, hidden = torch.randint(0, 96, (9,)), torch.randn(9, 3 * cfg["hidden_size"])
    _, ref_logits = reference_eagle3(w, cfg, target.get_input_embeddings().weight.detach(), tokens, hidden)
    with torch.no_grad():
        logits = head(input_ids=tokens[None], hidden_states=hidden[None]).logits[0]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    draft_ids = ref_logits.argmax(-1)
    assert torch.equal(head.to_target_ids(draft_ids), draft_ids + w["d2t"][draft_ids])  # d2t offsets -> target ids


def test_draft_step_feeds_back_the_prenorm_output(tmp_path, target):
    """The next draft level's hidden input is the parent's pre-norm layer output itself (no fc, no norm)."""
    w, cfg = write_eagle3(tmp_path / "src", target, seed=5)
    head = load_eagle3(tmp_path / "src", target=target)
    torch.manual_seed(5)
    tokens, hidden = torch.randint(0, 96, (6,)), torch.randn(6, 3 * cfg["hidden_size"])
    embed = target.get_input_embeddings().weight.detach()
    o, _ = reference_eagle3(w, cfg, embed, tokens, hidden)
    nxt = torch.tensor([17])
    g = torch.cat([hidden @ w["fc.weight"].T, o[-1:]])  # context entries fused by fc, the draft entry fed back as is
    _, ref_logits = reference_eagle3(w, cfg, embed, torch.cat([tokens, nxt]), g)
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        out = head(input_ids=tokens[None], hidden_states=hidden[None], cache=cache)
        step = head.draft_step(0, head.fuse_draft(nxt[None], out.regress_hidden[:, -1:]), torch.tensor([[6]]), None, cache)
        logits = head.draft_logits(step.predict)[0, -1]
    torch.testing.assert_close(out.regress_hidden[0], o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits[-1], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- features from the verification forward
def test_target_forward_collects_the_feature_layers_in_the_same_forward(target):
    from transformers.cache_utils import DynamicCache

    ids = torch.randint(0, 96, (1, 11))
    hooks_before = [len(layer._forward_hooks) for layer in target.model.layers]
    calls = []
    handle = target.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        features, logits = target_forward(target, ids, DynamicCache(), feature_layers=(4, 1, 3))
    finally:
        handle.remove()
    assert [len(layer._forward_hooks) for layer in target.model.layers] == hooks_before  # our hooks are gone again
    assert len(calls) == 1  # one decoder forward: no second pass for the features
    with torch.no_grad():
        ref = target(ids, output_hidden_states=True)
    hs = ref.hidden_states  # hs[i + 1] = output of decoder layer i (i < L - 1)
    assert torch.equal(features, torch.cat([hs[5], hs[2], hs[4]], dim=-1))  # in the order asked, [1, T, 3H]
    torch.testing.assert_close(logits, ref.logits[0].float(), rtol=1e-5, atol=1e-5)  # logits from the final norm
    plain, _ = target_forward(target, ids, DynamicCache())
    torch.testing.assert_close(plain, hs[-1], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- lossless decoding
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_output_identical_to_plain_generate(tmp_path, arch):
    tgt = make_target(arch, seed=3, num_hidden_layers=LAYERS)
    write_eagle3(tmp_path / "src", tgt, seed=7)
    head = load_eagle3(tmp_path / "src", target=tgt)
    for seed in range(3):
        torch.manual_seed(seed)
        ids = torch.randint(0, 96, (1, 6 + 3 * seed))
        ref = tgt.generate(ids, max_new_tokens=40, do_sample=False)
        out = tgt.generate(ids, assistant_model=head, max_new_tokens=40, do_sample=False)
        assert torch.equal(out, ref), (arch, seed)
    assert sum(head.last_generation_stats.tree_sizes) > 0  # the head drafted trees that the target verified


def test_lossless_with_retrieval_adaptive_policy_and_a_fresh_head(target):
    head = Eagle3DraftModel.from_target(target, draft_vocab_size=DRAFT_VOCAB)
    ids = torch.randint(0, 96, (1, 9))
    ref = target.generate(ids, max_new_tokens=30, do_sample=False)
    out = target.generate(ids, assistant_model=head, max_new_tokens=30, do_sample=False, retrieval_branches=2,
                          tree_policy="adaptive")
    assert torch.equal(out, ref)


# --------------------------------------------------------------------------- export for engines, round trip
def bound_head(target, seed=11) -> Eagle3DraftModel:
    torch.manual_seed(seed)
    head = Eagle3DraftModel.from_target(target, draft_vocab_size=DRAFT_VOCAB)
    with torch.no_grad():
        head.d2t.copy_(torch.randperm(96)[:DRAFT_VOCAB])  # an unsorted draft vocabulary
        for p in head.parameters():
            p.normal_(0, 0.3)
    return head.eval()


def drafted_tree(head, target, ids):
    from transformers.cache_utils import DynamicCache

    features, _ = target_forward(target, ids[:, :-1], DynamicCache(), feature_layers=head.target_feature_layers)
    drafter = TreeDrafter(head, TreeSettings.resolve(head.config, tree_total_tokens=10, tree_depth=3, tree_top_k=3))
    drafter.observe(features)
    return drafter.draft(ids)


LAYER_KEYS = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
              "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
              "hidden_norm.weight", "post_attention_layernorm.weight"}


@pytest.mark.parametrize("engine,prefix", [("vllm", "midlayer."), ("sglang", "midlayer."), ("speculators", "layers.0.")])
def test_export_import_round_trip(tmp_path, target, engine, prefix):
    from safetensors import safe_open

    head = bound_head(target)
    export_eagle(head, tmp_path / engine, engine=engine, verifier="tiny/target")
    with safe_open(str(tmp_path / engine / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        d2t, t2d = f.get_tensor("d2t"), f.get_tensor("t2d")
    assert keys == {prefix + k for k in LAYER_KEYS} | {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "embed_tokens.weight"}
    assert d2t.dtype == torch.int64 and torch.equal(d2t + torch.arange(DRAFT_VOCAB), head.d2t)  # offsets in the file
    assert t2d.dtype == torch.bool and int(t2d.sum()) == DRAFT_VOCAB and bool(t2d[head.d2t].all())
    back = load_eagle3(tmp_path / engine, target=target)
    mine, theirs = head.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert back.target_feature_layers == head.target_feature_layers
    ids = torch.randint(0, 96, (1, 12))
    a, b = drafted_tree(head, target, ids), drafted_tree(back, target, ids)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)


def test_export_config_fields_the_engines_read(tmp_path):
    tied = make_target("llama", num_hidden_layers=LAYERS, tie_word_embeddings=True)  # like SmolLM2 / Qwen2.5-0.5B
    head = bound_head(tied)
    cfg = json.loads((export_eagle(head, tmp_path / "v", engine="vllm") / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["tie_word_embeddings"] is False
    assert cfg["num_hidden_layers"] == 1 and cfg["draft_vocab_size"] == DRAFT_VOCAB and cfg["vocab_size"] == 96
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]  # SGLang / SpecForge: layer outputs
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]  # vLLM: inputs of those layers
    assert cfg["rope_theta"] == tied.config.rope_parameters["rope_theta"] and "bias" not in cfg
    spec = json.loads((export_eagle(head, tmp_path / "s", engine="speculators", verifier="me/tied") / "config.json").read_text())
    assert spec["speculators_model_type"] == "eagle3" and spec["norm_before_residual"] is False
    assert spec["speculators_config"]["verifier"]["name_or_path"] == "me/tied"
    assert spec["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == head.config.tree_depth
    assert spec["transformer_layer_config"]["num_hidden_layers"] == 1 and spec["draft_vocab_size"] == DRAFT_VOCAB
    assert spec["transformer_layer_config"]["tie_word_embeddings"] is False
    with pytest.raises(ValueError, match="verifier="):
        export_eagle(Eagle3DraftModel.from_target(make_target("llama", num_hidden_layers=LAYERS)), tmp_path / "x",
                     engine="speculators")


def test_fspad_heads_still_refused_and_speculators_needs_eagle3(tmp_path, target):
    with pytest.raises(ExportRefused, match="no such layer"):
        export_eagle(FSPADDraftModel.from_target(target), tmp_path / "f", engine="vllm")
    plain = FSPADDraftModel.from_target(target, feature_sampling=False, partial_alignment=False)
    with pytest.raises(ValueError, match="EAGLE-3 heads only"):
        export_eagle(plain, tmp_path / "p", engine="speculators")


# --------------------------------------------------------------------------- folders, CLI, errors
def test_saved_folder_loads_as_eagle3_and_converts_from_cli(tmp_path, target):
    from fspad_hf.cli import main

    write_eagle3(tmp_path / "src", target, seed=2, fmt="pickle")
    main(["convert", "--from", "eagle3", str(tmp_path / "src"), "--output", str(tmp_path / "out"), "--feature-layers", "1,3,4"])
    loaded = FSPADDraftModel.from_pretrained(tmp_path / "out")  # the folder's head_kind picks the class
    assert isinstance(loaded, Eagle3DraftModel) and loaded.target_feature_layers == (1, 3, 4)
    direct = load_eagle3(tmp_path / "src", target_feature_layers=[1, 3, 4])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in direct.state_dict().items())
    with pytest.raises(ValueError, match="not an FSPAD draft head"):
        FSPADDraftModel.from_pretrained(tmp_path / "src")  # the source folder itself is refused (conversion only)


def test_clear_errors_for_bad_heads_and_targets(tmp_path, target):
    write_eagle3(tmp_path / "nod2t", target, seed=0, drop=("d2t",))
    with pytest.raises(ValueError, match="no 'd2t' tensor"):
        load_eagle3(tmp_path / "nod2t", target=target)
    write_eagle3(tmp_path / "ok", target, seed=0)
    with pytest.raises(ValueError, match="target=<the target model>"):
        load_eagle3(tmp_path / "ok")  # the official config records no layers: the default needs the target
    with pytest.raises(ValueError, match="hidden_size=32"):
        load_eagle3(tmp_path / "ok", target=make_target("llama", num_hidden_layers=LAYERS, hidden_size=48))
    with pytest.raises(ValueError, match="exactly three target layers"):
        load_eagle3(tmp_path / "ok", target=target, target_feature_layers=[1, 2])
    with pytest.raises(ValueError, match="does not have"):
        load_eagle3(tmp_path / "ok", target=target, target_feature_layers=[1, 3, LAYERS])
    head = load_eagle3(tmp_path / "ok", target_feature_layers=[1, 3, 6])
    shallow = make_target("llama", num_hidden_layers=6)
    with pytest.raises(ValueError, match="has 6 decoder layers"):
        shallow.generate(torch.randint(0, 96, (1, 5)), assistant_model=head, max_new_tokens=3)
    write_eagle3(tmp_path / "nbr", target, seed=0, layout="speculators")
    cfg = json.loads((tmp_path / "nbr" / "config.json").read_text())
    (tmp_path / "nbr" / "config.json").write_text(json.dumps({**cfg, "norm_before_residual": True}))
    with pytest.raises(ValueError, match="norm_before_residual"):
        load_eagle3(tmp_path / "nbr", target=target)
    with pytest.raises(ValueError, match=r"width 64, expected 3 x 32"):
        head(input_ids=torch.zeros(1, 2, dtype=torch.long), hidden_states=torch.randn(1, 2, 64))


def test_trainer_refuses_eagle3_heads(tmp_path, target):
    from fspad_hf import FSPADTrainer

    write_eagle3(tmp_path / "src", target, seed=0)
    head = load_eagle3(tmp_path / "src", target=target)
    with pytest.raises(NotImplementedError, match="fuses target layers"):
        FSPADTrainer(model=head, target=target)
