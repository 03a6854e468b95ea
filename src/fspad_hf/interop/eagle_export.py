"""Export an EAGLE-2 head of this package to the EAGLE-1/2 layout vLLM and SGLang load.

vLLM (`vllm/model_executor/models/llama_eagle.py`, `EagleLlamaForCausalLM`): started with
`--speculative-config '{"method": "eagle", "model": DIR, ...}'`; its EAGLE config wrapper turns the
folder's `architectures: ["LlamaForCausalLM"]` into `EagleLlamaForCausalLM`. Its fc has no bias, and its
Llama layer reads a config `bias: true` as attention biases, so the export writes `bias: false` and no
`fc.bias` (a head whose fc bias is not zero is refused unless `drop_fc_bias=True`).
SGLang (`python/sglang/srt/models/llama_eagle.py`, `LlamaForCausalLMEagle`): `architectures:
["LlamaForCausalLMEagle"]`, started with `--speculative-algorithm EAGLE --speculative-draft-model-path DIR`;
its fc always has a bias, so `fc.bias` is always written. Both share the target's embedding and LM head at
run time; `embed_tokens.weight` (a copy of the bound target's) is written for vLLM, whose loader reads it
when pipeline parallelism is on, and on request for SGLang. See docs/interop-notes.md for the commits read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from ..head.modeling import FSPADDraftModel, unwrap_head
from .layout import CONFIG_FILE, EMBED, FC_BIAS, FC_WEIGHT, LAYER_PREFIX, NON_LAYER_KEYS, SAFE_FILE

ENGINES = {
    "vllm": {"architectures": ["LlamaForCausalLM"], "fc_bias": False, "embed": True},
    "sglang": {"architectures": ["LlamaForCausalLMEagle"], "fc_bias": True, "embed": False},
}
LAYOUT_MODEL_TYPES = ("llama",)  # the engines' EAGLE-1/2 drafters read are Llama layers


class ExportRefused(ValueError):
    """The head has a part the EAGLE-1/2 layout (and the engines that load it) cannot express."""


def refusal_reasons(head: FSPADDraftModel) -> list[str]:
    """Why `head` cannot be written in the EAGLE-1/2 layout (empty when it can)."""
    cfg = head.config
    reasons = []
    if cfg.feature_sampling:
        reasons.append("it uses Feature Sampling (FS: an embedding-gated residual MLP after fc); the engines' EAGLE "
                       "drafters have only the fc fusion, so the FS weights would be dropped and the drafts change")
    if cfg.partial_alignment:
        reasons.append("it uses Partial Alignment (PAD: the layer's MLP outputs two halves, logits from one, the "
                       "fed-back feature from the other); the engines' EAGLE layer has a single H-wide output")
    if cfg.num_draft_layers > 1:
        reasons.append(f"it is a PosS head ({cfg.num_draft_layers} position-specialist layers, each serving its own "
                       "draft positions); the engines run one drafter layer stack for every position")
    if cfg.draft_vocab_size is not None:
        reasons.append(f"it drafts over a reduced vocabulary ({cfg.draft_vocab_size} ids mapped by d2t); the EAGLE-1/2 "
                       "layout has no draft vocabulary (the engines draft over the target's full LM head)")
    model_type = (cfg.target_config or {}).get("model_type")
    if model_type not in LAYOUT_MODEL_TYPES:
        reasons.append(f"its layer is a '{model_type}' layer; the EAGLE-1/2 drafters of vLLM and SGLang checked here "
                       "(llama_eagle.py) build Llama layers only")
    return reasons


def with_legacy_rope(cfg: dict) -> dict:
    """Add `rope_theta` / `rope_scaling` next to `rope_parameters` (in place): transformers < 5, which the engines
    pin, reads the former; >= 5 the latter."""
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        cfg["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else {**scaling, "type": scaling["rope_type"]}
    return cfg


def export_config(head: FSPADDraftModel, engine: str) -> dict:
    """The `config.json` of the exported folder: the head's Llama text config with one layer."""
    spec = ENGINES[engine]
    cfg = {k: v for k, v in (head.config.target_config or {}).items() if k not in NON_LAYER_KEYS}
    cfg.update(num_hidden_layers=1, architectures=list(spec["architectures"]), model_type="llama")
    for key in ("layer_types", "sliding_window", "use_sliding_window", "max_window_layers"):
        cfg.pop(key, None)
    with_legacy_rope(cfg)
    if not spec["fc_bias"]:
        cfg["bias"] = False  # vLLM's Llama layer would read `bias: true` as attention biases
    cfg["torch_dtype"] = str(head.dtype).replace("torch.", "")
    return cfg


def export_state_dict(head: FSPADDraftModel, engine: str, drop_fc_bias: bool = False, include_embeddings: bool | None = None) -> dict:
    """The exported tensors (contiguous CPU copies) under the EAGLE-1/2 key names."""
    spec = ENGINES[engine]
    fc = head.fusion.fc
    state = {FC_WEIGHT: fc.weight}
    if spec["fc_bias"]:
        state[FC_BIAS] = fc.bias
    elif fc.bias is not None and bool(fc.bias.detach().abs().max() > 0) and not drop_fc_bias:
        raise ExportRefused(
            f"The head's fc bias is not zero (max |b| = {float(fc.bias.detach().abs().max()):.3g}), but vLLM's EAGLE "
            "drafter (EagleLlamaForCausalLM) has an fc without bias: the exported head would draft differently. Export "
            "for SGLang (whose fc has a bias), or pass drop_fc_bias=True to drop it (vLLM still verifies every token, "
            "so output stays correct; only acceptance may fall)."
        )
    for key, tensor in head.layers[0].state_dict().items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        state[LAYER_PREFIX + key] = tensor
    if include_embeddings if include_embeddings is not None else spec["embed"]:
        embed = head.get_input_embeddings()
        if embed is None:
            raise ValueError(
                f"Exporting for {engine} writes embed_tokens.weight (a copy of the target's input embedding), but the "
                "head is not bound to a target: call head.bind_target(target) first."
            )
        state[EMBED] = embed.weight
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


# head_kind -> "module:function" writing that kind's heads (EAGLE-3 heads: interop/eagle3_export.py).
EXPORTERS = {"fspad": f"{__name__}:export_eagle2", "eagle3": f"{__package__}.eagle3_export:export_eagle3"}


def export_eagle(head, out_dir: str | os.PathLike, engine: str = "vllm", **options) -> Path:
    """Write `head` in the layout `engine` loads; returns the folder.

    EAGLE-2 heads (`export_eagle2`): engine "vllm" or "sglang" (EAGLE-1/2 layout; options `drop_fc_bias`,
    `include_embeddings`). EAGLE-3 heads (`eagle3_export.export_eagle3`): "vllm", "sglang" (EAGLE-3 layout)
    or "speculators" (options `include_embeddings`, `verifier`, `speculative_tokens`). FS, PAD and PosS heads
    raise `ExportRefused` saying why. Nothing here was run in an engine (no GPU, no engine install).
    """
    import importlib

    head = unwrap_head(head)
    module, name = EXPORTERS[head.config.head_kind].split(":")
    return getattr(importlib.import_module(module), name)(head, out_dir, engine=engine, **options)


def export_eagle2(head, out_dir: str | os.PathLike, engine: str = "vllm", drop_fc_bias: bool = False,
                  include_embeddings: bool | None = None) -> Path:
    """Write an EAGLE-2 head in the EAGLE-1/2 layout `engine` ("vllm" or "sglang") loads; returns the folder.

    Files: `config.json` (Llama config, `num_hidden_layers: 1`; `architectures` per engine) and
    `model.safetensors` (`fc.*`, `layers.0.*`, and `embed_tokens.weight` for vLLM or when
    `include_embeddings=True`: copied from the bound target). FS, PAD, PosS heads, reduced draft
    vocabularies and non-Llama layers raise `ExportRefused` saying why. Not run in an engine here (no GPU,
    no engine install): the key names and config fields follow the loaders cited in docs/interop-notes.md.
    """
    head = unwrap_head(head)
    if engine not in ENGINES:
        hint = " (the speculators format holds EAGLE-3 heads only)" if engine == "speculators" else ""
        raise ValueError(f"engine must be one of {sorted(ENGINES)} for an EAGLE-2 head, got {engine!r}{hint}.")
    reasons = refusal_reasons(head)
    if reasons:
        raise ExportRefused(
            f"This {head.config.method_name} head cannot be exported to the EAGLE-1/2 layout {engine} loads: "
            + "; ".join(reasons) + ". vLLM and SGLang have no such layer; only plain EAGLE-2 heads "
            "(feature_sampling=False, partial_alignment=False, one layer, full vocabulary) can be exported."
        )
    from safetensors.torch import save_file

    state = export_state_dict(head, engine, drop_fc_bias=drop_fc_bias, include_embeddings=include_embeddings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / SAFE_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(export_config(head, engine), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


__all__ = ["export_eagle", "export_eagle2", "with_legacy_rope", "EXPORTERS", "export_config", "export_state_dict", "refusal_reasons", "ExportRefused", "ENGINES"]
