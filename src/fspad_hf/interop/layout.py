"""The EAGLE-1/2 and EAGLE-3 head layouts; EAGLE-3 at the end of this module.

EAGLE-1/2 (SafeAILab/EAGLE `eagle/model/cnets1.py`, also read by vLLM and SGLang) weights (one decoder
layer, no input norm, no final norm, no LM head):
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




# ---------------------------------------------------------------------------- EAGLE-3
# Official EAGLE-3 (SafeAILab/EAGLE `eagle/model/cnets.py` `Model`) and SpecForge (`LlamaForCausalLMEagle3`):
#     fc.weight [H, 3H_t] (no bias)      input is concat([low ; mid ; high]) target layer outputs
#     midlayer.self_attn.{q,k,v}_proj.weight [*, 2H], midlayer.self_attn.o_proj.weight
#     midlayer.mlp.{gate,up,down}_proj.weight
#     midlayer.{input_layernorm, hidden_norm, post_attention_layernorm}.weight
#     norm.weight, lm_head.weight [V_draft, H]
#     d2t [V_draft] (int64 offsets: target id = draft id + d2t[draft id]), t2d [V] (bool: target id is drafted)
#     embed_tokens.weight [V, H]        a copy of the target's input embedding (optional)
# Config: Llama style, num_hidden_layers 1, draft_vocab_size, optional target_hidden_size; SpecForge adds
# eagle_config.eagle_aux_hidden_state_layer_ids (outputs of those 0-based target layers).
# speculators (`Eagle3Speculator`) and vLLM: the same tensors with `layers.0.` instead of `midlayer.`; config
# {"speculators_model_type": "eagle3", "transformer_layer_config": {...}, "draft_vocab_size", "norm_before_residual",
# "target_hidden_size", "eagle_aux_hidden_state_layer_ids" (vLLM convention: layer *inputs*), "speculators_config"}.
EAGLE3_LAYER_PREFIXES = ("midlayer.", "layers.0.")
EAGLE3_FC = "fc.weight"
EAGLE3_NORM = "norm.weight"
EAGLE3_LM_HEAD = "lm_head.weight"
EAGLE3_D2T = "d2t"
EAGLE3_T2D = "t2d"
EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"  # SGLang EntryClass; vLLM's registry maps it to Eagle3LlamaForCausalLM


def split_eagle3_layer_key(key: str) -> str | None:
    """`midlayer.mlp.up_proj.weight` / `layers.0.mlp.up_proj.weight` -> `mlp.up_proj.weight`; None otherwise."""
    for prefix in EAGLE3_LAYER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


__all__ = ["FC_WEIGHT", "FC_BIAS", "EMBED", "LAYER_PREFIX", "SAFE_FILE", "PICKLE_FILE", "CONFIG_FILE",
           "NON_LAYER_KEYS", "IGNORED_SUFFIXES", "split_layer_key", "EAGLE3_LAYER_PREFIXES", "EAGLE3_FC", "EAGLE3_NORM",
           "EAGLE3_LM_HEAD", "EAGLE3_D2T", "EAGLE3_T2D", "EAGLE3_ARCHITECTURE", "split_eagle3_layer_key"]
