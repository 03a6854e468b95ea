"""Import a published EAGLE-3 head as an `Eagle3DraftModel` (official EAGLE-3, SpecForge/SGLang, speculators).

Layouts (see `layout.py` and docs/interop-notes.md for the files and commits read): the official and
SpecForge checkpoints name the layer `midlayer.*`, speculators (and vLLM's own module) `layers.0.*`; both
carry `fc` `[H, 3H]`, `norm`, `lm_head` `[V_draft, H]`, `d2t` (offsets) and `t2d`. The computation is the
one `fspad_hf.head.eagle3` implements, so the conversion renames tensors and turns the d2t offsets into
target ids; nothing is permuted.

Which target layers a head reads:
- the `target_feature_layers` argument, else
- SpecForge's `eagle_config.eagle_aux_hidden_state_layer_ids` (outputs of those 0-based layers: used as is), or
  the top-level `eagle_aux_hidden_state_layer_ids` of speculators / vLLM configs (vLLM captures the *input* of
  layer i, i.e. the output of layer i - 1: converted by - 1), else
- the EAGLE-3 default for the target's depth (`default_feature_layers`, needs `target`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig

from ..head.configuration import FSPADConfig
from ..head.eagle3 import Eagle3DraftModel, default_feature_layers
from ..head.target_parts import text_config_of
from ..integrity import read_json
from .eagle_import import read_eagle_weights, resolve_source
from .layout import (CONFIG_FILE, EAGLE3_D2T, EAGLE3_FC, EAGLE3_LM_HEAD, EAGLE3_NORM, EAGLE3_T2D, EMBED,
                     IGNORED_SUFFIXES, NON_LAYER_KEYS, split_eagle3_layer_key)

logger = logging.getLogger(__name__)

# EAGLE-3 config keys that are not Llama layer fields.
EAGLE3_ONLY_KEYS = ("draft_vocab_size", "target_hidden_size", "eagle_config", "eagle_aux_hidden_state_layer_ids",
                    "norm_before_residual", "speculators_model_type", "speculators_config", "speculators_version",
                    "transformer_layer_config", "torch_dtype", "dtype", "bias")


def split_config(raw: dict) -> tuple[dict, dict]:
    """(Llama layer fields, EAGLE-3 fields) of an official / SpecForge / speculators `config.json`."""
    if raw.get("speculators_model_type") is not None:
        if raw["speculators_model_type"] != "eagle3":
            raise ValueError(f"This speculators checkpoint is a '{raw['speculators_model_type']}' speculator, not EAGLE-3.")
        layer = dict(raw.get("transformer_layer_config") or {})
        return layer, {**raw, "norm_before_residual": raw.get("norm_before_residual", False)}  # speculators' default
    return {k: v for k, v in raw.items() if k not in EAGLE3_ONLY_KEYS}, raw


def draft_layer_config(layer_fields: dict) -> dict:
    """The head's `draft_layer_config`: the EAGLE-3 layer's Llama config, normalised by the installed transformers."""
    fields = {k: v for k, v in layer_fields.items() if k not in NON_LAYER_KEYS and k != "model_type"}
    if fields.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"This EAGLE-3 head has num_hidden_layers={fields['num_hidden_layers']}; only single-layer EAGLE-3 "
                         "heads (the published ones) can be imported.")
    out = AutoConfig.for_model("llama", **fields).to_dict()  # EAGLE-3 layers are Llama layers for every target
    for key in NON_LAYER_KEYS:
        out.pop(key, None)
    out.update(model_type="llama", num_hidden_layers=1, tie_word_embeddings=False)
    return out


def recorded_feature_layers(raw: dict) -> list[int] | None:
    """The target layers the config records, in this package's convention (0-based layer outputs)."""
    nested = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    top = raw.get("eagle_aux_hidden_state_layer_ids")
    from_top = [int(i) - 1 for i in top] if top else None  # vLLM: input of layer i == output of layer i - 1
    if nested and from_top and list(nested) != from_top:
        raise ValueError(f"config.json records two different feature layers: eagle_config ids {nested} (layer outputs) "
                         f"and eagle_aux_hidden_state_layer_ids {top} (layer inputs, i.e. outputs {from_top}).")
    return [int(i) for i in nested] if nested else from_top


def absolute_d2t(state: dict, draft_vocab: int, vocab: int, weights_path: Path) -> torch.Tensor | None:
    """Target ids of the draft ids (`d2t` offsets + arange), checked against `t2d`; None for a full vocabulary."""
    if EAGLE3_D2T not in state:
        if draft_vocab == vocab:
            return None
        raise ValueError(
            f"{weights_path} has a reduced draft vocabulary (draft_vocab_size={draft_vocab} < vocab_size={vocab}) but no "
            "'d2t' tensor, so its draft ids cannot be mapped to target ids. Add the d2t / t2d tensors the head was "
            "trained with (SpecForge and the EAGLE-3 training script save them with the weights)."
        )
    offsets = state[EAGLE3_D2T].to(torch.long)
    if tuple(offsets.shape) != (draft_vocab,):
        raise ValueError(f"{weights_path}: d2t has shape {tuple(offsets.shape)}, expected ({draft_vocab},) (draft_vocab_size).")
    ids = offsets + torch.arange(draft_vocab)  # EAGLE-3: target id = draft id + d2t[draft id]
    if int(ids.min()) < 0 or int(ids.max()) >= vocab or ids.unique().numel() != draft_vocab:
        raise ValueError(f"{weights_path}: d2t does not map the {draft_vocab} draft ids to distinct target ids in [0, {vocab}).")
    t2d = state.get(EAGLE3_T2D)
    if t2d is not None:
        t2d = t2d.to(torch.bool)
        if tuple(t2d.shape) != (vocab,) or int(t2d.sum()) != draft_vocab or not bool(t2d[ids].all()):
            raise ValueError(f"{weights_path}: t2d disagrees with d2t (it must mark exactly the {draft_vocab} target ids d2t "
                             "maps to); the vocabulary mapping is corrupt.")
    return None if draft_vocab == vocab and torch.equal(ids, torch.arange(vocab)) else ids


def resolve_feature_layers(explicit, raw: dict, target) -> list[int]:
    if explicit is not None:
        return [int(i) for i in explicit]
    recorded = recorded_feature_layers(raw)
    if recorded is not None:
        return recorded
    if target is not None:
        return default_feature_layers(text_config_of(target).num_hidden_layers)
    raise ValueError(
        "This EAGLE-3 config does not record which target layers the head reads, and no target was given: pass "
        "target=<the target model> (the EAGLE-3 default [1, L // 2 - 1, L - 4] depends on its depth L) or "
        "target_feature_layers=[low, mid, high] (fspad-hf convert --from eagle3 ... --target T / --feature-layers a,b,c)."
    )


def load_eagle3(path: str | os.PathLike, target=None, target_feature_layers=None,
                dtype: torch.dtype | None = None) -> Eagle3DraftModel:
    """Load an EAGLE-3 head (official EAGLE-3, SpecForge / SGLang or speculators layout) as an `Eagle3DraftModel`.

    path: a local folder with `config.json` and `model.safetensors` or `pytorch_model.bin` (read with
        `torch.load(weights_only=True)`, in this explicit conversion only), or a Hub repo id (downloaded when
        the Hub is reachable; not exercised by the offline test suite).
    target: optional target; checks hidden size, vocabulary and depth, fills in the default feature layers,
        binds the head and moves it to the target's device and dtype.
    target_feature_layers: the three 0-based target layers whose outputs the head reads (default: the config's,
        else the EAGLE-3 default for the target).
    The file's `embed_tokens.weight` is not kept (the bound target's embedding is used; a differing copy is
    reported); an `fc.bias` (the official code, vLLM and SpecForge build fc without one) is dropped with a warning.
    """
    folder = resolve_source(path)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not an EAGLE-3 head folder.")
    raw = read_json(folder / CONFIG_FILE)
    layer_fields, eagle_fields = split_config(raw)
    if eagle_fields.get("norm_before_residual"):
        raise ValueError("This EAGLE-3 head has norm_before_residual=true (its residual is the normed hidden state); the "
                         "EAGLE-3 layer here (and in the EAGLE / SpecForge code) adds the un-normed one. Not supported.")
    state, weights_path = read_eagle_weights(folder)
    if EAGLE3_FC not in state or EAGLE3_LM_HEAD not in state:
        raise ValueError(f"{weights_path} lacks '{EAGLE3_FC}' or '{EAGLE3_LM_HEAD}' (keys start {sorted(state)[:6]}): not an "
                         "EAGLE-3 head. EAGLE-1/2 heads load with fspad_hf.interop.load_eagle.")
    layer_cfg = draft_layer_config(layer_fields)
    hidden, vocab = layer_cfg["hidden_size"], layer_cfg["vocab_size"]
    target_hidden = eagle_fields.get("target_hidden_size") or hidden
    if tuple(state[EAGLE3_FC].shape) != (hidden, 3 * target_hidden):
        raise ValueError(f"{weights_path}: fc.weight has shape {tuple(state[EAGLE3_FC].shape)}, expected "
                         f"{(hidden, 3 * target_hidden)} (three target layers of width {target_hidden} -> {hidden}).")
    if target_hidden != hidden:
        raise ValueError(f"This EAGLE-3 head's layer is {hidden} wide but reads a {target_hidden}-wide target "
                         "(target_hidden_size): such heads carry their own embedding, which is not supported yet.")
    draft_vocab = int(eagle_fields.get("draft_vocab_size") or state[EAGLE3_LM_HEAD].shape[0])
    d2t = absolute_d2t(state, draft_vocab, vocab, weights_path)
    layers = resolve_feature_layers(target_feature_layers, raw, target)
    tcfg = text_config_of(target) if target is not None else None
    for key, value in (("hidden_size", target_hidden), ("vocab_size", vocab)):
        if tcfg is not None and getattr(tcfg, key, None) != value:
            raise ValueError(f"EAGLE-3 head/target mismatch: the head's config.json implies a target with {key}={value}, the "
                             f"target ({type(target).__name__}) has {getattr(tcfg, key, None)}. Use the head trained for this target.")
    verifier = ((raw.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")
    config = FSPADConfig(
        target_config=tcfg.to_dict() if tcfg is not None else None,
        target_name_or_path=(getattr(target, "name_or_path", None) or None) if target is not None else verifier,
        target_architecture=(getattr(target.config, "architectures", None) or [type(target).__name__])[0] if target is not None else None,
        feature_sampling=False, partial_alignment=False, num_draft_layers=1,
        draft_vocab_size=None if d2t is None else draft_vocab,
        head_kind="eagle3", target_feature_layers=layers, draft_layer_config=layer_cfg,
        hidden_size=hidden, intermediate_size=layer_cfg["intermediate_size"], vocab_size=vocab,
    )
    config._attn_implementation = (tcfg._attn_implementation if tcfg is not None else None) or "sdpa"
    head = Eagle3DraftModel(config)
    _load_weights(head, state, d2t, weights_path)
    if dtype is None:
        dtype = target.dtype if target is not None else torch.float32
    head.to(dtype=dtype, device=target.device if target is not None else "cpu").eval()
    if target is not None:
        head.bind_target(target)
        _compare_embedding(state, target, weights_path)
    return head


def _load_weights(head: Eagle3DraftModel, state: dict, d2t: torch.Tensor | None, weights_path: Path) -> None:
    """Copy the tensors strictly: unknown keys, missing weights and wrong shapes are errors."""
    own_layer = head.layers[0].state_dict()
    targets = {EAGLE3_FC: head.fc.weight, EAGLE3_NORM: head.norm.weight, EAGLE3_LM_HEAD: head.lm_head.weight}
    seen, unknown = set(), []
    with torch.no_grad():
        for key, tensor in state.items():
            if key in (EAGLE3_D2T, EAGLE3_T2D, EMBED) or key.endswith(IGNORED_SUFFIXES):
                continue
            if key == "fc.bias":
                if bool(tensor.abs().max() > 0):
                    logger.warning("%s has an fc.bias; EAGLE-3's fc has none (EAGLE cnets.py, vLLM): dropping it.", weights_path)
                continue
            sub = split_eagle3_layer_key(key)
            dst = own_layer.get(sub) if sub is not None else targets.get(key)
            if dst is None:
                unknown.append(key)
                continue
            if tuple(dst.shape) != tuple(tensor.shape):
                raise ValueError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, the head expects {tuple(dst.shape)}.")
            dst.copy_(tensor.to(dst.dtype))
            seen.add(("layer", sub) if sub is not None else ("top", key))
        if unknown:
            raise ValueError(f"{weights_path} has tensors an EAGLE-3 head does not have: {sorted(unknown)[:8]} (a multi-layer "
                             "head, or another draft method).")
        missing = [f"midlayer.{k}" for k in own_layer if ("layer", k) not in seen]
        missing += [k for k in targets if ("top", k) not in seen]
        if missing:
            raise ValueError(f"{weights_path} lacks weights of the EAGLE-3 head: {missing}.")
        if d2t is not None:
            head.d2t.copy_(d2t)


def _compare_embedding(state: dict, target, weights_path: Path) -> None:
    if EMBED not in state:
        return
    theirs, mine = state[EMBED], target.get_input_embeddings().weight
    if tuple(theirs.shape) != tuple(mine.shape):
        raise ValueError(f"{weights_path}: embed_tokens.weight has shape {tuple(theirs.shape)}, the target's is {tuple(mine.shape)}.")
    if not torch.allclose(theirs.float(), mine.detach().to("cpu", torch.float32), rtol=1e-3, atol=1e-3):
        logger.warning("%s: embed_tokens.weight differs from the target's input embedding; the imported head uses the "
                       "target's (drafts may differ from the source's, output stays lossless).", weights_path)


__all__ = ["load_eagle3", "split_config", "draft_layer_config", "recorded_feature_layers", "absolute_d2t"]
