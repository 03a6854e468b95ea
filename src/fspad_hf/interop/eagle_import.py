"""Import a published EAGLE-1/2 head (SafeAILab/EAGLE layout) as an EAGLE-2 `FSPADDraftModel`.

The reference computation (EAGLE `cnets1.py`): `z = fc([embed(x_{t+1}) ; f_t])`, then one Llama decoder
layer whose input norm is skipped (`h = z + attn(z)`, `o = h + mlp(post_attention_norm(h))`), no final
norm, logits `= target.lm_head(o)`; `f_t` is the target's last hidden state after its final norm. That is
exactly this package's EAGLE-2 head (`FeatureFusion.fc` also concatenates [embedding ; feature] and
`pre_norm_recipe` skips the input norm), so the conversion is a renaming of weights: no permutation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..head.configuration import FSPADConfig
from ..head.modeling import FSPADDraftModel
from ..head.target_parts import text_config_of
from ..integrity import read_json
from .layout import (CONFIG_FILE, EMBED, FC_BIAS, FC_WEIGHT, IGNORED_SUFFIXES, NON_LAYER_KEYS, PICKLE_FILE, SAFE_FILE,
                     split_layer_key)

logger = logging.getLogger(__name__)


def resolve_source(path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded with `huggingface_hub.snapshot_download`."""
    local = Path(os.path.expanduser(str(path)))
    if local.is_dir():
        return local
    text = str(path)
    if local.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"EAGLE head not found: {path} is neither a local folder nor a Hub repo id 'owner/name'.")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(text, allow_patterns=[CONFIG_FILE, SAFE_FILE, PICKLE_FILE]))


def read_eagle_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of an EAGLE head folder: `model.safetensors` if present, else `pytorch_model.bin`
    read with `torch.load(weights_only=True)` (tensors only: no code runs while unpickling)."""
    safe, pickled = folder / SAFE_FILE, folder / PICKLE_FILE
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe), device="cpu"), safe
    if pickled.is_file():
        try:
            state = torch.load(str(pickled), map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"{pickled} could not be read as plain tensors (torch.load weights_only=True): {error}") from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{pickled} does not hold a flat state dict of tensors (an EAGLE-1/2 head checkpoint).")
        return state, pickled
    raise FileNotFoundError(f"{folder} has neither {SAFE_FILE} nor {PICKLE_FILE}: not an EAGLE-1/2 head folder.")


def eagle_target_config(eagle_config: dict) -> dict:
    """The EAGLE config (Llama style) as a text-config dict for `FSPADConfig.target_config`.

    Built through the config class, so legacy fields (`rope_theta`, `rope_scaling`) are normalised the
    way the installed transformers reads them; `head_dim` is `hidden / heads` as in the EAGLE code.
    """
    from transformers import AutoConfig

    fields = {k: v for k, v in eagle_config.items() if k not in NON_LAYER_KEYS}
    model_type = fields.pop("model_type", None) or "llama"
    layers = fields.get("num_hidden_layers", 1)
    if layers != 1:
        raise ValueError(
            f"This EAGLE head has num_hidden_layers={layers}; only single-layer EAGLE-1/2 heads (the published ones) "
            "can be imported (later layers of a multi-layer EAGLE head keep their input norm, which an EAGLE-2 head of "
            "this package does not have)."
        )
    if fields.get("qkv_bias") and model_type == "llama":
        fields["attention_bias"] = True  # q/k/v biases; a missing o_proj bias is filled with zeros below
    cfg = AutoConfig.for_model(model_type, **fields)
    out = cfg.to_dict()
    for key in NON_LAYER_KEYS:
        out.pop(key, None)
    out["model_type"] = model_type
    return out


def _fc_bias_used(eagle_config: dict, state: dict) -> bool:
    # The EAGLE code builds fc with bias=config.get("bias", True) and loads the file non-strictly.
    wanted = bool(eagle_config.get("bias", True))
    if FC_BIAS in state and not wanted:
        logger.warning("config.json says bias=false but the weights have fc.bias; ignoring it as the EAGLE code does.")
    if wanted and FC_BIAS not in state:
        logger.info("No fc.bias in the weights: using a zero fc bias.")
    return wanted and FC_BIAS in state


def _check_against_target(target_config: dict, target) -> dict:
    tcfg = text_config_of(target)
    for key in ("hidden_size", "vocab_size"):
        if target_config.get(key) != getattr(tcfg, key, None):
            raise ValueError(
                f"EAGLE head/target mismatch: the head's config.json has {key}={target_config.get(key)} but the target "
                f"({type(target).__name__}) has {key}={getattr(tcfg, key, None)}. Use the EAGLE head trained for this target."
            )
    if target_config["model_type"] != tcfg.model_type:
        raise ValueError(
            f"EAGLE head/target mismatch: the head is a '{target_config['model_type']}' layer, the target is "
            f"'{tcfg.model_type}'. Only heads whose layer type matches the target can be run with it."
        )
    return tcfg


def load_eagle(path: str | os.PathLike, target=None, dtype: torch.dtype | None = None) -> FSPADDraftModel:
    """Load an EAGLE-1/2 head (SafeAILab/EAGLE layout) as an EAGLE-2 `FSPADDraftModel` (FS and PAD off).

    path: a local folder with `config.json` and `model.safetensors` or `pytorch_model.bin`, or a Hub repo id
        (downloaded with `huggingface_hub.snapshot_download` when the Hub is reachable; that route is not
        exercised by the test suite, which runs offline).
    target: optional target model; when given, its hidden size, vocabulary and layer type are checked, the
        head is bound to it and moved to its device and dtype. Without it, bind later (`generate()` does).
    dtype: the head's dtype (default: the target's, else float32).

    The EAGLE file's `embed_tokens.weight` is not kept: heads of this package use the bound target's own
    embedding (the EAGLE code loads that same matrix from the target); with a target, a differing copy is
    reported. `pytorch_model.bin` is read with `torch.load(map_location="cpu", weights_only=True)`, here
    only; `FSPADDraftModel.from_pretrained` still refuses pickle folders. Save the result with
    `save_pretrained` (or `fspad-hf convert --from eagle SRC --output DIR`) to get a normal head folder.
    """
    folder = resolve_source(path)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not an EAGLE-1/2 head folder.")
    eagle_config = read_json(config_path)
    state, weights_path = read_eagle_weights(folder)
    if FC_WEIGHT not in state:
        keys = sorted(state)[:6]
        raise ValueError(
            f"{weights_path} has no '{FC_WEIGHT}' (keys start {keys}): not an EAGLE-1/2 head. EAGLE-3 heads "
            "(midlayer.*, d2t/t2d) are a different layout."
        )
    target_config = eagle_target_config(eagle_config)
    hidden = target_config["hidden_size"]
    if tuple(state[FC_WEIGHT].shape) != (hidden, 2 * hidden):
        raise ValueError(
            f"{weights_path}: fc.weight has shape {tuple(state[FC_WEIGHT].shape)}, expected {(hidden, 2 * hidden)} "
            f"for hidden_size={hidden} (an EAGLE-3 fc is [H, 3H]: a different layout)."
        )
    tcfg = _check_against_target(target_config, target) if target is not None else None
    config = FSPADConfig(
        target_config=target_config,
        target_name_or_path=(getattr(target, "name_or_path", None) or None) if target is not None else eagle_config.get("_name_or_path") or None,
        target_architecture=(getattr(target.config, "architectures", None) or [type(target).__name__])[0] if target is not None else None,
        feature_sampling=False,
        partial_alignment=False,
        num_draft_layers=1,
    )
    config._attn_implementation = (tcfg._attn_implementation if tcfg is not None else None) or "sdpa"
    head = FSPADDraftModel(config)
    _load_weights(head, eagle_config, state, weights_path)
    if dtype is None:
        dtype = target.dtype if target is not None else torch.float32
    head.to(dtype=dtype, device=target.device if target is not None else "cpu")
    head.eval()
    if target is not None:
        head.bind_target(target)
        _compare_embedding(state, target, weights_path)
    return head


def _load_weights(head: FSPADDraftModel, eagle_config: dict, state: dict, weights_path: Path) -> None:
    """Copy the EAGLE tensors into `head`, strictly: unknown keys and missing weights are errors; missing
    biases the layer class has but the source lacks (e.g. o_proj for qkv_bias heads) are zeros."""
    layer = head.layers[0]
    own = layer.state_dict()
    with torch.no_grad():
        head.fusion.fc.weight.copy_(state[FC_WEIGHT].to(head.fusion.fc.weight.dtype))
        if _fc_bias_used(eagle_config, state):
            head.fusion.fc.bias.copy_(state[FC_BIAS].to(head.fusion.fc.bias.dtype))
        else:
            head.fusion.fc.bias.zero_()
        seen = set()
        unknown = []
        for key, tensor in state.items():
            if key in (FC_WEIGHT, FC_BIAS, EMBED) or key.endswith(IGNORED_SUFFIXES):
                continue
            sub = split_layer_key(key)
            if sub is None or sub not in own:
                unknown.append(key)
                continue
            if tuple(own[sub].shape) != tuple(tensor.shape):
                raise ValueError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, the layer expects {tuple(own[sub].shape)}.")
            own[sub].copy_(tensor.to(own[sub].dtype))
            seen.add(sub)
        if unknown:
            hint = " (an input_layernorm: this is not an EAGLE-1/2 first layer)" if any("input_layernorm" in k for k in unknown) else ""
            raise ValueError(f"{weights_path} has weights an EAGLE-1/2 head does not have{hint}: {sorted(unknown)[:8]}")
        missing = [k for k in own if k not in seen]
        hard = [k for k in missing if not k.endswith(".bias")]
        if hard:
            raise ValueError(f"{weights_path} lacks weights of the draft layer: {['layers.0.' + k for k in hard]}")
        for key in missing:
            own[key].zero_()


def _compare_embedding(state: dict, target, weights_path: Path) -> None:
    if EMBED not in state:
        return
    theirs = state[EMBED]
    mine = target.get_input_embeddings().weight
    if tuple(theirs.shape) != tuple(mine.shape):
        raise ValueError(f"{weights_path}: embed_tokens.weight has shape {tuple(theirs.shape)}, the target's is {tuple(mine.shape)}.")
    if not torch.allclose(theirs.to(torch.float32), mine.detach().to("cpu", torch.float32), rtol=1e-3, atol=1e-3):
        logger.warning(
            "%s: embed_tokens.weight differs from the target's input embedding; the imported head uses the target's "
            "(drafts may differ from the EAGLE code's, output stays lossless).", weights_path
        )


__all__ = ["load_eagle", "read_eagle_weights", "eagle_target_config", "resolve_source"]
