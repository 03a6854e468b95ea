"""What the draft head needs from a target model, found generically (no per-architecture code)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

logger = logging.getLogger(__name__)


def decoder_of(target: PreTrainedModel) -> nn.Module:
    """The base decoder (e.g. `LlamaModel`) of a causal LM: its output is the post-final-norm feature."""
    decoder = target.get_decoder() if hasattr(target, "get_decoder") else None
    if decoder is None or not hasattr(decoder, "layers"):
        decoder = getattr(target, getattr(target, "base_model_prefix", "model"), None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise TypeError(
            f"{type(target).__name__} does not look like a decoder-only causal LM (no base model with `.layers`); "
            "fspad_hf supports decoder-only *ForCausalLM models."
        )
    return decoder


def text_config_of(target: PreTrainedModel) -> PretrainedConfig:
    return target.config.get_text_config()


def classes_for_config(cfg: PretrainedConfig) -> tuple[type, type]:
    """(decoder-layer class, rotary-embedding class) of the architecture `cfg` describes.

    The base model is instantiated on the meta device with one layer, so no memory is used and no
    modeling file is copied: the head reuses exactly the classes the target uses.
    """
    base_cls = MODEL_MAPPING.get(type(cfg), None)
    if base_cls is None:
        raise NotImplementedError(f"No transformers base model is registered for config {type(cfg).__name__}.")
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.num_hidden_layers = 1
    if getattr(probe_cfg, "layer_types", None) is not None:
        probe_cfg.layer_types = probe_cfg.layer_types[:1]
    with torch.device("meta"):
        probe = base_cls(probe_cfg)
    rotary = getattr(probe, "rotary_emb", None)
    if rotary is None:
        raise NotImplementedError(f"{base_cls.__name__} has no `rotary_emb`; only RoPE decoders are supported.")
    return type(probe.layers[0]), type(rotary)


def rotary_takes_layer_type(rotary: nn.Module) -> bool:
    """Whether the rotary module is called as `rotary(x, position_ids, layer_type)` (e.g. Gemma-3)."""
    return "layer_type" in inspect.signature(rotary.forward).parameters


def output_logits(target_cfg: PretrainedConfig, weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """`W_lm h (+ b)` with the target's final logit soft-capping when it has one (Gemma-2 style)."""
    logits = nn.functional.linear(hidden, weight, bias)
    cap = getattr(target_cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def target_logits(target: PreTrainedModel, features: torch.Tensor) -> torch.Tensor:
    head = target.get_output_embeddings()
    return output_logits(text_config_of(target), head.weight, getattr(head, "bias", None), features)


def tokenizer_fingerprint(tokenizer) -> str:
    """Short stable hash of a tokenizer's vocabulary (token -> id), to check a head against a target."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8")).hexdigest()
    return digest[:16]


__all__ = [
    "decoder_of",
    "text_config_of",
    "classes_for_config",
    "rotary_takes_layer_type",
    "output_logits",
    "target_logits",
    "tokenizer_fingerprint",
]
