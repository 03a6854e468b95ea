"""The EAGLE-1/2 head layout (SafeAILab/EAGLE `eagle/model/cnets1.py`, also read by vLLM and SGLang).

Weights (one decoder layer, no input norm, no final norm, no LM head):
    fc.weight [H, 2H]  (+ fc.bias [H])      input is concat([token embedding ; target feature])
    layers.0.self_attn.{q,k,v,o}_proj.weight (+ q/k/v biases for qkv_bias heads)
    layers.0.mlp.{gate,up,down}_proj.weight
    layers.0.post_attention_layernorm.weight
    embed_tokens.weight [V, H]               a copy of the target's input embedding (optional)
Config: a Llama-style `config.json` with `num_hidden_layers: 1` and an optional `bias` (the fc bias;
the EAGLE code defaults it to True when absent).
"""

from __future__ import annotations

FC_WEIGHT = "fc.weight"
FC_BIAS = "fc.bias"
EMBED = "embed_tokens.weight"
LAYER_PREFIX = "layers.0."
SAFE_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.json"

# Config keys that describe the source checkpoint, not the layer (dropped when building our config).
NON_LAYER_KEYS = ("architectures", "auto_map", "quantization_config", "transformers_version", "torch_dtype", "dtype",
                  "bias", "_name_or_path")

# Keys a layer state dict may carry that are buffers, never weights (older checkpoints saved them).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def split_layer_key(key: str) -> str | None:
    """`layers.0.mlp.up_proj.weight` -> `mlp.up_proj.weight`; None for keys outside layer 0."""
    return key[len(LAYER_PREFIX):] if key.startswith(LAYER_PREFIX) else None


__all__ = ["FC_WEIGHT", "FC_BIAS", "EMBED", "LAYER_PREFIX", "SAFE_FILE", "PICKLE_FILE", "CONFIG_FILE",
           "NON_LAYER_KEYS", "IGNORED_SUFFIXES", "split_layer_key"]
