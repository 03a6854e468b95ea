"""EAGLE-3 heads as a head kind of this package: `Eagle3DraftModel` (config: `FSPADConfig(head_kind="eagle3")`).

The computation, as the EAGLE-3 sources describe it (SafeAILab/EAGLE `eagle/model/cnets.py`, SpecForge
`LlamaForCausalLMEagle3`, vLLM / SGLang `llama_eagle3.py`; commits in docs/interop-notes.md), for context
entry t (target token t, next token x_{t+1}):

    g_t = fc([a_t ; b_t ; c_t])                    a, b, c: outputs of target layers low / mid / high  [3H_t -> H]
    u   = [input_layernorm(e(x_{t+1})) ; hidden_norm(g_t)]                                         [2H]
    h   = g_t + o_proj(attention(q, k, v of u))    the residual is the un-normed g_t
    o   = h + mlp(post_attention_layernorm(h))     the layer output, before the final norm
    logits = lm_head(norm(o))                      over the draft vocabulary (d2t maps ids to the target's)

While drafting, the next level's hidden input is the parent's `o` itself (no fc: it is already H wide), so
`DraftStep.predict == DraftStep.feedback == o`. The draft layer is the transformers `LlamaDecoderLayer`
(EAGLE-3 drafters are Llama layers whatever the target is), with one adaptation: its q/k/v projections read
the 2H-wide `u` instead of H, and it gains the `hidden_norm` for the fused half (the layer's own
`input_layernorm` normalises the embedding half). Everything else (attention kernels, RoPE, the KV cache,
the MLP) is the stock layer's.

Decoding uses the drafting interface (head/interface.py) only, so the tree drafter, retrieval merge,
adaptive policy and verification are the ones FSPAD heads use; `target_feature_layers` makes the
verification forward return the three layers' outputs instead of the final feature (no second pass).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache

from ..compat import cache_kwargs
from .configuration import FSPADConfig
from .interface import DraftStep
from .modeling import FSPADDraftModel
from .target_parts import classes_for_config, text_config_of, tokenizer_fingerprint

logger = logging.getLogger(__name__)

# Target text-config fields an EAGLE-3 layer built for that target copies (its own Llama layer).
LAYER_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "max_position_embeddings", "vocab_size", "hidden_act", "initializer_range")


def default_feature_layers(num_layers: int) -> list[int]:
    """EAGLE-3's default low / middle / high layers of an L-layer target, as 0-based indices of the layers
    whose outputs are read: `[1, L // 2 - 1, L - 4]` (SpecForge's ids; the EAGLE code reads the same tensors
    as the inputs of layers 2, L // 2, L - 3)."""
    if num_layers < 5:
        raise ValueError(f"The EAGLE-3 default layers [1, L // 2 - 1, L - 4] need a target with at least 5 decoder layers "
                         f"(this one has {num_layers}); pass target_feature_layers=[low, mid, high] explicitly.")
    return [1, num_layers // 2 - 1, num_layers - 4]


def draft_layer_config_for(target_config: PretrainedConfig) -> dict:
    """The Llama config of an EAGLE-3 layer sized for `target_config` (what SpecForge writes for any target)."""
    out = {k: getattr(target_config, k) for k in LAYER_FIELDS if getattr(target_config, k, None) is not None}
    rope = getattr(target_config, "rope_parameters", None) or {}
    if "full_attention" in rope:  # per-layer-type RoPE (e.g. Gemma-3): the draft layer is a full-attention layer
        rope = rope["full_attention"]
    if rope:
        out["rope_parameters"] = dict(rope)
    out.update(model_type="llama", num_hidden_layers=1, attention_bias=False, mlp_bias=False, tie_word_embeddings=False)
    return out


def build_layer_config(draft_layer_config: dict, attn_implementation: str | None) -> PretrainedConfig:
    """The transformers Llama config of the draft layer (one layer, full attention)."""
    fields = copy.deepcopy(draft_layer_config)
    model_type = fields.pop("model_type", "llama")
    for key in ("architectures", "auto_map", "quantization_config", "transformers_version"):
        fields.pop(key, None)
    cfg = AutoConfig.for_model(model_type, **fields)
    cfg.num_hidden_layers = 1
    cfg._attn_implementation = attn_implementation or "sdpa"
    return cfg


def adapt_eagle3_layer(layer: nn.Module, hidden_size: int, eps: float) -> nn.Module:
    """Widen q/k/v to read `[norm(e) ; norm(g)]` (2H) and add `hidden_norm` for the fused half.

    Why an adaptation: the stock layer's projections read H features; EAGLE-3 concatenates two normalised
    H-wide vectors before attention. o_proj, the MLP and both stock norms keep their shapes.
    """
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        setattr(attn, name, nn.Linear(2 * hidden_size, old.out_features, bias=False))
    layer.hidden_norm = type(layer.input_layernorm)(hidden_size, eps=eps)
    return layer


def eagle3_layer_step(layer: nn.Module, embeds: torch.Tensor, hidden: torch.Tensor, attn_kwargs: dict) -> torch.Tensor:
    """One EAGLE-3 layer: embeds, hidden `[B, T, H]` -> the pre-norm output `o` `[B, T, H]`."""
    u = torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(hidden)], dim=-1)  # [B, T, 2H]
    attn_out, _ = layer.self_attn(hidden_states=u, **attn_kwargs)
    h = hidden + attn_out  # the residual is the un-normed hidden input (norm after residual)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def check_eagle3_config(config: FSPADConfig) -> None:
    """Raise a ValueError naming the bad field and the fix: an EAGLE-3 config has all of its fields, no FS / PAD."""
    if config.head_kind != "eagle3":
        raise ValueError(f"Eagle3DraftModel needs head_kind='eagle3', got {config.head_kind!r}: load FSPAD heads "
                         "with FSPADDraftModel.")
    if config.feature_sampling or config.partial_alignment or config.num_draft_layers != 1:
        raise ValueError("An EAGLE-3 head has no FS, no PAD and one draft layer: build it with "
                         "feature_sampling=False, partial_alignment=False, num_draft_layers=1.")
    if not isinstance(config.draft_layer_config, dict):
        raise ValueError("An EAGLE-3 head needs draft_layer_config (its Llama layer's config); build it with "
                         "Eagle3DraftModel.from_target(target) or fspad_hf.interop.load_eagle3(path).")
    layers = config.target_feature_layers
    if layers is None or len(layers) != 3 or min(layers) < 0:
        raise ValueError(f"An EAGLE-3 head fuses exactly three target layers; target_feature_layers={layers}. Pass "
                         "three 0-based decoder-layer indices (low, middle, high), e.g. [1, L // 2 - 1, L - 4].")
    depth = (config.target_config or {}).get("num_hidden_layers")
    if depth is not None and max(layers) >= depth:
        raise ValueError(f"target_feature_layers={layers} name a layer the target does not have (it has {depth} "
                         f"decoder layers, indices 0..{depth - 1}).")


class Eagle3DraftModel(FSPADDraftModel):
    """EAGLE-3 draft head: three target layers fused by `fc`, one Llama layer over `[norm(e) ; norm(g)]`, its
    own final `norm` and `lm_head` over a reduced draft vocabulary (`d2t`: draft id -> target id).

    A head kind of the FSPAD family (same config class, loading, binding, decoding routes): the target's
    input embedding is bound and used frozen; the LM head is the head's own. `FSPADDraftModel.from_pretrained`
    builds this class for folders whose config says `head_kind: "eagle3"`. Import published heads with
    `fspad_hf.interop.load_eagle3`; export with `fspad_hf.interop.export_eagle`.
    """

    def __init__(self, config: FSPADConfig):
        check_eagle3_config(config)
        PreTrainedModel.__init__(self, config)  # the FSPAD layers of FSPADDraftModel.__init__ are not built
        layer_cfg = build_layer_config(config.draft_layer_config, config._attn_implementation)
        layer_cls, rotary_cls = classes_for_config(layer_cfg)
        self.layer_config = layer_cfg
        hidden = layer_cfg.hidden_size
        target_hidden = (config.target_config or {}).get("hidden_size", hidden)
        if target_hidden != hidden:
            raise NotImplementedError(
                f"This EAGLE-3 head's layer is {hidden} wide but its target's hidden size is {target_hidden}: such heads "
                "carry their own embedding (target_hidden_size != hidden_size), which this package does not support yet."
            )
        eps = getattr(layer_cfg, "rms_norm_eps", 1e-6)
        self.layers = nn.ModuleList([adapt_eagle3_layer(layer_cls(layer_cfg, layer_idx=0), hidden, eps)])
        self.fc = nn.Linear(3 * target_hidden, hidden, bias=False)  # [a ; b ; c] (low, mid, high) -> g
        self.norm = type(self.layers[0].input_layernorm)(hidden, eps=eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size or config.vocab_size, bias=False)
        if config.draft_vocab_size is not None:
            # d2t[i] = target id of draft id i (absolute ids; the EAGLE-3 files store offsets d2t[i] - i).
            self.register_buffer("d2t", torch.arange(config.draft_vocab_size, dtype=torch.long), persistent=True)
        else:
            self.d2t = None
        self.rotary_emb = rotary_cls(config=layer_cfg)
        self._rotary_per_layer_type = False  # a Llama rotary
        self.__dict__["_bound"] = None
        self.post_init()

    # standalone: omit (building new heads)
    @classmethod
    def from_target(cls, target: PreTrainedModel, tokenizer=None, target_feature_layers=None,
                    **config_overrides) -> Eagle3DraftModel:
        """A randomly initialised EAGLE-3 head sized for `target` (default layers: `default_feature_layers`)."""
        tcfg = text_config_of(target)
        layers = list(target_feature_layers) if target_feature_layers is not None else default_feature_layers(tcfg.num_hidden_layers)
        for key in ("feature_sampling", "partial_alignment"):
            config_overrides.setdefault(key, False)
        return super().from_target(target, tokenizer, head_kind="eagle3", target_feature_layers=layers,
                                   draft_layer_config=draft_layer_config_for(tcfg), **config_overrides)

    def check_target(self, target: PreTrainedModel, tokenizer=None) -> None:
        """Raise if `target` cannot feed this head: hidden size, vocabulary, depth for the feature layers."""
        cfg, tcfg = self.config, text_config_of(target)
        wanted = {"hidden_size": self.fc.in_features // 3, "vocab_size": cfg.vocab_size}
        for key, value in wanted.items():
            if value != getattr(tcfg, key, None):
                raise ValueError(
                    f"EAGLE-3 head/target mismatch: the head needs a target with {key}={value}, but the target "
                    f"({type(target).__name__}) has {key}={getattr(tcfg, key, None)}. Use the EAGLE-3 head trained for "
                    "this target (fc reads three of its layers, d2t maps into its vocabulary)."
                )
        depth = tcfg.num_hidden_layers
        if max(cfg.target_feature_layers) >= depth:
            raise ValueError(
                f"This EAGLE-3 head reads target layers {cfg.target_feature_layers}, but the target has {depth} decoder "
                f"layers (0..{depth - 1}). Use the head trained for this target, or rebuild it with "
                f"target_feature_layers={default_feature_layers(depth) if depth >= 5 else '[low, mid, high]'}."
            )
        recorded = (cfg.target_config or {}).get("model_type")
        if recorded is not None and recorded != tcfg.model_type:
            raise ValueError(f"EAGLE-3 head/target mismatch: the head was built for a '{recorded}' target, this one is "
                             f"'{tcfg.model_type}'. Use the EAGLE-3 head trained for this target.")
        if tokenizer is not None and cfg.target_tokenizer_fingerprint:
            if tokenizer_fingerprint(tokenizer) != cfg.target_tokenizer_fingerprint:
                raise ValueError("EAGLE-3 head/target mismatch: the tokenizer's vocabulary differs from the one the head "
                                 "was built with; use the tokenizer of the head's target.")

    def _refresh_draft_lm_head(self) -> None:
        pass  # the head has its own lm_head: nothing to cache from the target

    # standalone: omit (training)
    def set_draft_vocab(self, token_ids) -> None:
        raise NotImplementedError("An EAGLE-3 head's lm_head rows belong to its draft vocabulary (d2t): it cannot be "
                                  "re-mapped after training. Import the head with its own d2t (load_eagle3).")

    # ------------------------------------------------------------------ drafting interface (head/interface.py)
    @property
    def target_feature_layers(self) -> tuple[int, ...] | None:
        return tuple(self.config.target_feature_layers)

    def fuse_context(self, next_tokens: torch.LongTensor, target_features: torch.Tensor) -> torch.Tensor:
        """`[e ; g]` `[B, T, 2H]` from the three target layers' outputs `[B, T, 3H_t]` (fused by `fc`).

        An `[B, T, H]` input is taken as an already fused feature, as the EAGLE-3 reference code does (it
        applies fc only when the width differs from the embedding's); any other width is an error.
        """
        features = target_features.to(self.dtype)
        width = features.shape[-1]
        if width == self.fc.in_features:
            features = self.fc(features)  # [B, T, 3H_t] -> [B, T, H]
        elif width != self.fc.out_features:
            raise ValueError(
                f"EAGLE-3 head: target features of width {width}, expected 3 x {self.fc.in_features // 3} (the outputs of "
                f"target layers {self.config.target_feature_layers} concatenated). Decode through generate(), which "
                "collects them from the verification forward, or concatenate those layers' outputs yourself."
            )
        return torch.cat([self.embed(next_tokens), features], dim=-1)  # [B, T, 2H]

    def fuse_draft(self, next_tokens: torch.LongTensor, feedback: torch.Tensor) -> torch.Tensor:
        # the parent's pre-norm output is the next hidden input as it is (no fc)
        return torch.cat([self.embed(next_tokens), feedback.to(self.dtype)], dim=-1)  # [B, T, 2H]

    def draft_step(
        self,
        specialist: int,
        fused: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> DraftStep:
        self.layer_config._attn_implementation = self.config._attn_implementation or "sdpa"
        hidden = self.fc.out_features
        embeds, features = fused[..., :hidden], fused[..., hidden:]  # [B, T, 2H] -> 2 x [B, T, H]
        attn_kwargs = {
            "position_embeddings": self.rotary_emb(fused, position_ids),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **cache_kwargs(cache),
        }
        out = eagle3_layer_step(self.layers[specialist], embeds, features, attn_kwargs)
        return DraftStep(predict=out, feedback=out)

    def draft_logits(self, predict: torch.Tensor) -> torch.Tensor:
        """`lm_head(norm(o))` over the draft vocabulary `[..., V_draft]`."""
        return self.lm_head(self.norm(predict.to(self.dtype)))


__all__ = ["Eagle3DraftModel", "check_eagle3_config", "default_feature_layers", "draft_layer_config_for", "adapt_eagle3_layer",
           "eagle3_layer_step"]
