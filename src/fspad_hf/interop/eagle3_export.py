"""Export an EAGLE-3 head to the layouts vLLM and SGLang load as EAGLE-3, and to the speculators format.

- engine "vllm" / "sglang": one folder both load (official EAGLE-3 / SpecForge layout).
  `config.json`: a Llama config with `architectures: ["LlamaForCausalLMEagle3"]` (SGLang's EntryClass of
  `llama_eagle3.py`; vLLM's registry maps it to `Eagle3LlamaForCausalLM`), `num_hidden_layers: 1`,
  `draft_vocab_size`, `tie_word_embeddings: false` (SGLang would otherwise use the embedding as LM head, which
  matters for tied targets such as SmolLM2 and Qwen2.5-0.5B), and the feature layers twice, once per
  engine's convention: `eagle_config.eagle_aux_hidden_state_layer_ids` (SGLang / SpecForge: outputs of those
  layers; SGLang adds 1 internally) and the top-level `eagle_aux_hidden_state_layer_ids` (vLLM: it captures
  the input of layer i, so ids + 1). Weights: `fc.weight`, `midlayer.*` (SGLang's module name; vLLM renames
  it to `layers.0.`), `norm.weight`, `lm_head.weight`, `d2t` (offsets), `t2d`, `embed_tokens.weight`.
- engine "speculators": `config.json` with `speculators_model_type: "eagle3"`, `transformer_layer_config`,
  `draft_vocab_size`, `norm_before_residual: false` (written: vLLM reads a missing one as true),
  `eagle_aux_hidden_state_layer_ids` (vLLM convention) and `speculators_config` (algorithm, proposal
  method, verifier name and architectures); weights as above with `layers.0.*`.
Nothing here was run in vLLM or SGLang (no GPU, no engine install); the loader files and commits read are
listed in docs/interop-notes.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..head.eagle3 import Eagle3DraftModel
from .eagle_export import with_legacy_rope
from .layout import (CONFIG_FILE, EAGLE3_ARCHITECTURE, EAGLE3_D2T, EAGLE3_FC, EAGLE3_LM_HEAD, EAGLE3_NORM, EAGLE3_T2D, EMBED,
                     NON_LAYER_KEYS, SAFE_FILE)

ENGINES = {
    "vllm": {"layer_prefix": "midlayer."},
    "sglang": {"layer_prefix": "midlayer."},
    "speculators": {"layer_prefix": "layers.0."},
}


def layer_config(head: Eagle3DraftModel) -> dict:
    """The EAGLE-3 layer's Llama config as the engines read it (legacy RoPE fields added, untied)."""
    cfg = {k: v for k, v in head.config.draft_layer_config.items() if k not in NON_LAYER_KEYS}
    cfg.update(num_hidden_layers=1, model_type="llama", tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg.setdefault("head_dim", head.layer_config.head_dim)
    return with_legacy_rope(cfg)


def vocab_tensors(head: Eagle3DraftModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(`d2t` offsets `[V_draft]`, `t2d` mask `[V]`) in the EAGLE-3 file convention."""
    vocab = head.config.vocab_size
    ids = head.d2t.detach().cpu() if head.d2t is not None else torch.arange(vocab)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[ids] = True
    return (ids - torch.arange(ids.numel())).to(torch.int64), t2d


def engine_config(head: Eagle3DraftModel, engine: str, verifier: str | None, speculative_tokens: int) -> dict:
    """The exported `config.json` for `engine`."""
    layers = list(head.config.target_feature_layers)
    draft_vocab = head.lm_head.out_features
    dtype = str(head.dtype).replace("torch.", "")
    if engine != "speculators":
        return {**layer_config(head), "architectures": [EAGLE3_ARCHITECTURE], "draft_vocab_size": draft_vocab,
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": layers, "use_aux_hidden_state": True},
                "eagle_aux_hidden_state_layer_ids": [i + 1 for i in layers], "torch_dtype": dtype}
    name = verifier or head.config.target_name_or_path
    if not name:
        raise ValueError("The speculators format records its verifier (the target's name or path), and this head has none: "
                         "pass verifier='<target repo id or path>' to export_eagle.")
    return {
        "speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
        "transformer_layer_config": layer_config(head), "draft_vocab_size": draft_vocab, "norm_before_residual": False,
        "target_hidden_size": head.fc.in_features // 3, "eagle_aux_hidden_state_layer_ids": [i + 1 for i in layers],
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": int(speculative_tokens)}],
            "verifier": {"name_or_path": name,
                         "architectures": [head.config.target_architecture] if head.config.target_architecture else []},
        },
        "torch_dtype": dtype,
    }


def export_state_dict(head: Eagle3DraftModel, engine: str, include_embeddings: bool = True) -> dict:
    """The exported tensors (contiguous CPU copies) under `engine`'s key names."""
    prefix = ENGINES[engine]["layer_prefix"]
    d2t, t2d = vocab_tensors(head)
    state = {EAGLE3_FC: head.fc.weight, EAGLE3_NORM: head.norm.weight, EAGLE3_LM_HEAD: head.lm_head.weight,
             EAGLE3_D2T: d2t, EAGLE3_T2D: t2d}
    state.update({prefix + k: v for k, v in head.layers[0].state_dict().items()})
    if include_embeddings:
        embed = head.get_input_embeddings()
        if embed is None:
            raise ValueError("The export writes embed_tokens.weight (a copy of the target's input embedding), but the head "
                             "is not bound to a target: call head.bind_target(target) first, or pass include_embeddings=False.")
        state[EMBED] = embed.weight
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def export_eagle3(head: Eagle3DraftModel, out_dir: str | os.PathLike, engine: str = "vllm", include_embeddings: bool = True,
                  verifier: str | None = None, speculative_tokens: int | None = None) -> Path:
    """Write an EAGLE-3 head for `engine` ("vllm", "sglang" or "speculators"); returns the folder.

    include_embeddings: write `embed_tokens.weight` (a copy of the bound target's; SGLang replaces it with the
        target's at run time, vLLM uses it when present). verifier: the target name recorded in the speculators
        config (default: the head's `target_name_or_path`). speculative_tokens: the speculators proposal length
        (default: the head's `tree_depth`).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)} for an EAGLE-3 head, got {engine!r}.")
    from safetensors.torch import save_file

    config = engine_config(head, engine, verifier, speculative_tokens or head.config.tree_depth)
    state = export_state_dict(head, engine, include_embeddings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / SAFE_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


__all__ = ["export_eagle3", "engine_config", "export_state_dict", "vocab_tensors", "layer_config", "ENGINES"]
