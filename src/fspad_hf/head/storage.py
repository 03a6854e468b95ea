"""Compact storage for bundled heads: weight-only int8 with one absmax scale per output row.

A Qwen2.5-0.5B FSPAD head has ~34M parameters (FS adds a target-sized MLP, PAD doubles `down_proj`),
so bf16 safetensors are ~68 MB and a PosS-2 head ~107 MB. Storing the large matrices as int8 halves
that. It is a *storage* format only: loading dequantizes to a float dtype, so the head runs exactly
like a float head whose weights are the dequantized values, and decoding stays lossless (the target
verifies every token). Small tensors (norms, biases) and integer buffers (`d2t`) are kept as they are.

    save_int8(head, folder)                       # config.json + model.int8.safetensors
    FSPADDraftModel.from_pretrained(folder)       # finds the int8 file and dequantizes it
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .loading import INT8_WEIGHTS_NAME, SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME

SCALE_SUFFIX = ".int8_scale"
_FORMAT = "fspad-int8-rowwise-v1"


def quantize_int8(state_dict: dict[str, torch.Tensor], min_numel: int = 4096) -> dict[str, torch.Tensor]:
    """Floating 2-D tensors with >= `min_numel` elements -> int8 rows + float32 per-row scales."""
    out: dict[str, torch.Tensor] = {}
    for name, w in state_dict.items():
        if not (w.is_floating_point() and w.dim() == 2 and w.numel() >= min_numel):
            out[name] = w.contiguous()
            continue
        w32 = w.detach().float()
        scale = w32.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [rows]; |q| <= 127 by construction
        out[name] = torch.round(w32 / scale[:, None]).to(torch.int8).contiguous()  # [rows, cols]
        out[name + SCALE_SUFFIX] = scale.contiguous()
    return out


def dequantize_int8(stored: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_int8` (up to rounding): int8 rows times their scale, cast to `dtype`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        if scale is not None:
            out[name] = (t.float() * scale[:, None]).to(dtype)
        elif t.is_floating_point():
            out[name] = t.to(dtype)
        else:
            out[name] = t
    return out


def save_int8(head, folder: str | os.PathLike, min_numel: int = 4096) -> Path:
    """Save `head` (an FSPADDraftModel) as `config.json` + int8 weights (matrices of >= `min_numel`
    elements); returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head.config.save_pretrained(folder)
    for stale in (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME):  # from_pretrained would prefer them
        (folder / stale).unlink(missing_ok=True)
    path = folder / INT8_WEIGHTS_NAME
    tmp = path.with_suffix(".tmp")
    save_file(quantize_int8(head.state_dict(), min_numel), str(tmp), metadata={"format": "pt", "fspad_storage": _FORMAT})
    os.replace(tmp, path)
    return path


def load_int8(cls, folder: str | os.PathLike, dtype: torch.dtype | str | None = None):
    """Build `cls` from `folder`'s config and its int8 weights, dequantized to `dtype` (default: the
    config's `dtype`, else float32). Every parameter and buffer must be present (strict)."""
    folder = Path(folder)
    config = cls.config_class.from_pretrained(folder)
    if dtype in (None, "auto"):
        dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    stored = load_file(str(folder / INT8_WEIGHTS_NAME))
    model = cls(config)
    missing, unexpected = model.load_state_dict(dequantize_int8(stored, dtype), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder / INT8_WEIGHTS_NAME} does not match its config.json (missing: {missing}, unexpected: "
            f"{unexpected}); re-save the head with fspad_hf.head.storage.save_int8."
        )
    return model.to(dtype).eval()


__all__ = ["dequantize_int8", "load_int8", "quantize_int8", "save_int8"]
