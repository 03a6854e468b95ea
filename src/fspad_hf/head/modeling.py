"""The draft head: `FSPADDraftModel`, a `PreTrainedModel` built from the target's own layer class."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from ..compat import cache_kwargs
from ..masks import causal_additive_mask
from .configuration import FSPADConfig
from .interface import DraftStep
from .layers import FeatureFusion, adapt_layer, recipe_for
from .loading import load_head
from .target_parts import classes_for_config, decoder_of, output_logits, rotary_takes_layer_type, text_config_of, tokenizer_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class FSPADOutput(ModelOutput):
    """Output of `FSPADDraftModel.forward` (inference: draft logits for given features).

    logits: `[B, T, V_draft]` draft logits from the predict half (None if not requested).
    predict_hidden: `[B, T, H]` o_p, the logits source (equals `regress_hidden` without PAD).
    regress_hidden: `[B, T, H]` o_r, the predicted next target feature (fed back when drafting).
    cache: the head's own KV cache, when one was passed (the field name of transformers >= 5.24).
    """

    logits: torch.Tensor | None = None
    predict_hidden: torch.Tensor | None = None
    regress_hidden: torch.Tensor | None = None
    cache: Cache | None = None


class FSPADPreTrainedModel(PreTrainedModel):
    config_class = FSPADConfig
    base_model_prefix = "fspad"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # Linear layers get the target's initializer; norms keep their class's own initial values
        # (Gemma's RMSNorm stores `weight - 1`, so a generic "fill with ones" would be wrong); rotary
        # buffers (not saved) are recomputed by a fresh instance of the target's rotary class.
        if isinstance(module, nn.Linear):
            std = (self.config.target_config or {}).get("initializer_range", 0.02)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif "RotaryEmbedding" in type(module).__name__:
            fresh = type(module)(config=module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                init.copy_(getattr(module, name), buffer)


class FSPADDraftModel(FSPADPreTrainedModel):
    """Feature-level draft head for speculative decoding (FSPAD, EAGLE-2 and PosS in one class).

    Inputs at position t are the target feature `f_t` and the token `x_{t+1}`; the head predicts
    `f_{t+1}` and the distribution of `x_{t+2}`. The target's embedding and LM head are used frozen
    and are *not* part of this module's weights: call `bind_target(target)` (done automatically by
    `from_target` and by `generate`).
    """

    def __init__(self, config: FSPADConfig):
        super().__init__(config)
        layer_cfg = config.build_target_text_config()
        layer_cls, rotary_cls = classes_for_config(layer_cfg)
        self.layer_config = layer_cfg
        hidden, inter = config.hidden_size, config.intermediate_size
        self.layers = nn.ModuleList(
            adapt_layer(layer_cls(layer_cfg, layer_idx=i), hidden, config.partial_alignment)
            for i in range(config.num_draft_layers)
        )
        norm_cls = type(self.layers[0].post_attention_layernorm)
        eps = getattr(layer_cfg, "rms_norm_eps", 1e-6)
        self.fusion = FeatureFusion(hidden, inter, config.feature_sampling, norm_factory=lambda: norm_cls(hidden, eps=eps))
        self.rotary_emb = rotary_cls(config=layer_cfg)
        self._rotary_per_layer_type = rotary_takes_layer_type(self.rotary_emb)
        self._recipe = recipe_for(self.layers[0])
        if config.draft_vocab_size is not None:
            # d2t[i] = target id of draft id i (the reduced draft vocabulary); saved with the head.
            self.register_buffer("d2t", torch.arange(config.draft_vocab_size, dtype=torch.long), persistent=True)
        else:
            self.d2t = None
        self.__dict__["_bound"] = None  # target modules: used frozen, never registered nor saved
        # Loading weights (Trainer resume, init_from, int8 storage) may bring another d2t: the cached
        # draft LM head rows must follow it.
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.post_init()

    # standalone: omit (the generated file loads with transformers' loader, safetensors only)
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> FSPADDraftModel:
        """Load a saved head: a shipped head's short name, a local folder or a Hub repo id.

        Only `config.json` + safetensors weights are read and no code from the folder is run (pickle
        checkpoints are refused); see `fspad_hf.head.loading`.
        """
        return load_head(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    # ------------------------------------------------------------------ target binding
    # standalone: omit (building new heads)
    @classmethod
    def from_target(cls, target: PreTrainedModel, tokenizer=None, **config_overrides) -> FSPADDraftModel:
        """A randomly initialised head sized for `target`, on its device and in its dtype."""
        tcfg = text_config_of(target)
        config = FSPADConfig(
            target_config=tcfg.to_dict(),
            target_name_or_path=getattr(target, "name_or_path", None) or None,
            target_architecture=(getattr(target.config, "architectures", None) or [type(target).__name__])[0],
            target_tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
            **config_overrides,
        )
        config._attn_implementation = tcfg._attn_implementation or "sdpa"
        head = cls(config)
        head.to(device=target.device, dtype=target.dtype)
        head.bind_target(target)
        return head

    def check_target(self, target: PreTrainedModel, tokenizer=None) -> None:
        """Raise if the head cannot work with `target`; warn if it was trained for another model."""
        cfg, tcfg = self.config, text_config_of(target)
        if cfg.target_config is None:
            raise ValueError("This head has no `target_config`; build it with FSPADDraftModel.from_target(target).")
        mine = cfg.target_config
        for key in ("hidden_size", "vocab_size"):
            if mine.get(key) != getattr(tcfg, key, None):
                raise ValueError(
                    f"Head/target mismatch: the head was built for {key}={mine.get(key)} but the target "
                    f"({type(target).__name__}) has {key}={getattr(tcfg, key, None)}. Use a head trained for this "
                    "target, or create one with FSPADDraftModel.from_target(target)."
                )
        if mine.get("model_type") != tcfg.model_type:
            raise ValueError(
                f"Head/target mismatch: the head's layers are '{mine.get('model_type')}' layers, the target is "
                f"'{tcfg.model_type}'. Use a head trained for this target."
            )
        if tokenizer is not None and cfg.target_tokenizer_fingerprint:
            if tokenizer_fingerprint(tokenizer) != cfg.target_tokenizer_fingerprint:
                raise ValueError(
                    "Head/target mismatch: the tokenizer's vocabulary differs from the one the head was trained with "
                    f"(fingerprint {tokenizer_fingerprint(tokenizer)} != {cfg.target_tokenizer_fingerprint}). "
                    "Use the tokenizer of the target the head was trained for, or a head trained with this tokenizer."
                )
        name = getattr(target, "name_or_path", None)
        warned = self.__dict__.setdefault("_warned_targets", set())
        if cfg.target_name_or_path and name and name != cfg.target_name_or_path and name not in warned:
            warned.add(name)
            logger.warning(
                "This head was trained for '%s' but is used with '%s'. Output stays lossless; acceptance may be low.",
                cfg.target_name_or_path,
                name,
            )

    def bind_target(self, target: PreTrainedModel, tokenizer=None) -> FSPADDraftModel:
        """Use `target`'s frozen input embedding and LM head (checked for compatibility first)."""
        self.check_target(target, tokenizer)
        out = target.get_output_embeddings()
        self.__dict__["_bound"] = {
            "target_id": id(target),
            "embed": target.get_input_embeddings(),
            "lm_head": out,
            "text_config": text_config_of(target),
            "decoder": decoder_of(target),
        }
        self._refresh_draft_lm_head()
        return self

    def _refresh_draft_lm_head(self) -> None:
        """Cache the (frozen) draft LM head: the target's rows for the draft vocabulary."""
        out = self._bound["lm_head"]
        weight = out.weight if self.d2t is None else out.weight[self.d2t.to(out.weight.device)]
        bias = getattr(out, "bias", None)
        if bias is not None and self.d2t is not None:
            bias = bias[self.d2t.to(bias.device)]
        self._bound["lm_weight"] = weight.detach()
        self._bound["lm_bias"] = None if bias is None else bias.detach()

    # standalone: omit (training)
    def set_draft_vocab(self, token_ids) -> None:
        """Set the reduced draft vocabulary (target ids, e.g. from `trainer.select_draft_vocab`)."""
        if self.d2t is None:
            raise ValueError("This head has the full vocabulary; build it with draft_vocab_size=N to reduce it.")
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.d2t.device)
        if ids.shape != self.d2t.shape or ids.unique().numel() != ids.numel():
            raise ValueError(f"Expected {self.d2t.numel()} distinct target ids, got shape {tuple(ids.shape)}.")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"Draft vocabulary ids must lie in [0, {self.config.vocab_size}).")
        self.d2t.copy_(ids)
        if self._bound is not None:
            self._refresh_draft_lm_head()

    # standalone: omit (not used by decoding)
    def bound_to(self, target: PreTrainedModel) -> bool:
        return self._bound is not None and self._bound["target_id"] == id(target)

    def _require_bound(self) -> dict:
        if self._bound is None:
            raise RuntimeError(
                "This head is not bound to a target model: call head.bind_target(target) first "
                "(generate() does it for you)."
            )
        return self._bound

    def get_input_embeddings(self):
        return None if self._bound is None else self._bound["embed"]

    # ------------------------------------------------------------------ drafting interface (head/interface.py)
    @property
    def num_specialists(self) -> int:
        return len(self.layers)

    @property
    def target_feature_layers(self) -> tuple[int, ...] | None:
        return None  # the post-final-norm feature of the target (decoding asks every head)

    def specialist_for_position(self, position: int) -> int:
        return self.config.specialist_for_position(position)

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The target's (frozen) input embedding of target-vocabulary ids `[B, T]` -> `[B, T, H]`."""
        with torch.no_grad():
            return self._require_bound()["embed"](input_ids).to(self.dtype)

    def fuse_context(self, next_tokens: torch.LongTensor, target_features: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.embed(next_tokens), target_features.to(self.dtype))  # [B, T, H]

    def fuse_draft(self, next_tokens: torch.LongTensor, feedback: torch.Tensor) -> torch.Tensor:
        # FSPAD / EAGLE-2: a fed-back feature enters the same fusion as a target feature.
        return self.fusion(self.embed(next_tokens), feedback.to(self.dtype))  # [B, T, H]

    def draft_step(
        self,
        specialist: int,
        fused: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> DraftStep:
        self.layer_config._attn_implementation = self.config._attn_implementation or "sdpa"
        attn_kwargs = {
            "position_embeddings": self._position_embeddings(fused, position_ids),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **cache_kwargs(cache),
        }
        return self._recipe(self.layers[specialist], fused, attn_kwargs, self.config.partial_alignment)

    def draft_logits(self, predict: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (the full target vocab, or the reduced one mapped by `d2t`)."""
        b = self._require_bound()
        weight = b["lm_weight"]
        return output_logits(b["text_config"], weight, b["lm_bias"], predict.to(weight.dtype))

    def to_target_ids(self, draft_ids: torch.LongTensor) -> torch.LongTensor:
        return draft_ids if self.d2t is None else self.d2t[draft_ids]

    def _position_embeddings(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rotary_per_layer_type:  # e.g. Gemma-3: draft layers are full-attention layers
            return self.rotary_emb(x, position_ids, "full_attention")
        return self.rotary_emb(x, position_ids)

    # ------------------------------------------------------------------ inference forward
    # standalone: omit (inspection API; decoding drives the drafting interface)
    def forward(
        self,
        input_ids: torch.LongTensor,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
        **kwargs,
    ) -> FSPADOutput:
        """Draft logits for given features (the public way to inspect drafts; first draft position).

        input_ids: `[B, T]` tokens `x_{t+1}`; hidden_states: `[B, T, H]` target features `f_t`.
        attention_mask: additive float mask `[B|1, 1, T, past + T]`; causal when None.
        cache: the head's own KV cache (appended to). logits_to_keep: logits for the last N positions only.
        Training does not go through here: `fspad_hf.training.losses` drives the drafting interface.
        """
        if "loss_mask" in kwargs:
            raise TypeError(
                "FSPADDraftModel.forward is inference-only; train with fspad_hf.FSPADTrainer or "
                "fspad_hf.training.losses.draft_objective(head, ...)."
            )
        fused = self.fuse_context(input_ids, hidden_states)  # [B, T, H]
        specialist = self.specialist_for_position(1)
        past_len = cache.get_seq_length(specialist) if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + fused.shape[1], device=fused.device)[None]
        if attention_mask is None and fused.shape[1] > 1:
            attention_mask = causal_additive_mask(fused.shape[1], past_len, fused.dtype, fused.device)
        out = self.draft_step(specialist, fused, position_ids, attention_mask, cache)
        logits = None
        if return_logits:
            logits = self.draft_logits(out.predict if logits_to_keep == 0 else out.predict[:, -logits_to_keep:])
        return FSPADOutput(logits=logits, predict_hidden=out.predict, regress_hidden=out.feedback, cache=cache)


def _refresh_after_load(module: FSPADDraftModel, incompatible_keys) -> None:
    if module._bound is not None and module.d2t is not None:
        module._refresh_draft_lm_head()


def unwrap_head(model) -> FSPADDraftModel:
    """The FSPAD head inside a PEFT / DDP wrapper (or the model itself)."""
    seen = model
    for _ in range(4):
        if isinstance(seen, FSPADDraftModel):
            return seen
        nxt = getattr(seen, "module", None)
        if nxt is None and hasattr(seen, "get_base_model"):
            nxt = seen.get_base_model()
        if nxt is None:
            break
        seen = nxt
    raise TypeError(f"Expected an FSPADDraftModel (possibly PEFT/DDP-wrapped), got {type(model).__name__}.")


__all__ = ["FSPADDraftModel", "FSPADPreTrainedModel", "FSPADOutput", "unwrap_head"]
