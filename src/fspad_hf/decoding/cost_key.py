"""Cache keys of the cost tables (`cost_model.py`): what a cached table must match to be reused.

The key covers the device, CPU model and features, dtype, torch threads, torch and transformers versions
and the target's (for draft tables also the head's) cost-relevant config fields; `key_name` is the file stem.
"""

from __future__ import annotations

import hashlib
import json

import torch

from ..head.target_parts import text_config_of


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def target_fingerprint(target) -> dict:
    """The target config fields a forward's cost depends on."""
    cfg = text_config_of(target)
    fields = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
              "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")
    out = {f: getattr(cfg, f, None) for f in fields}
    out["attn_implementation"] = getattr(cfg, "_attn_implementation", None)
    return out


def head_fingerprint(head) -> dict:
    """The head config fields a draft level's cost depends on."""
    cfg = head.config
    fields = ("model_type", "hidden_size", "intermediate_size", "vocab_size", "draft_vocab_size", "num_draft_layers",
              "positions_per_layer", "feature_sampling", "partial_alignment")
    out = {f: getattr(cfg, f, None) for f in fields}
    out["layer_model_type"] = (cfg.target_config or {}).get("model_type")
    out["dtype"] = str(next(head.parameters()).dtype).removeprefix("torch.")
    return out


def machine_key(target, head=None) -> dict:
    """Everything a cached table must match: machine, software, dtype, threads, target (and head)."""
    import transformers

    from ..machine import cpu_description

    param = next(target.parameters())
    key = {"kind": "verify" if head is None else "draft", "device": _device_description(param.device),
           "cpu": cpu_description(), "dtype": str(param.dtype).removeprefix("torch."),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__, "target": target_fingerprint(target)}
    if head is not None:
        key["head"] = head_fingerprint(head)
    return key


def key_name(key: dict) -> str:
    """File stem: readable prefix plus a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"{key['kind']}-{key['target'].get('model_type')}-{key['dtype']}-{key['threads']}t-{digest}"


__all__ = ["head_fingerprint", "key_name", "machine_key", "target_fingerprint"]
