"""Compact storage for bundled heads: weight-only int8 with one absmax scale per output row.

A Qwen2.5-0.5B FSPAD head has ~34M parameters (FS adds a target-sized MLP, PAD doubles `down_proj`),
so bf16 safetensors are ~68 MB and a PosS-2 head ~107 MB. Storing the large matrices as int8 halves
that. It is a *storage* format only: loading dequantizes to a float dtype, so the head runs exactly
like a float head whose weights are the dequantized values, and decoding stays lossless (the target
verifies every token). Small tensors (norms, biases) and integer buffers (`d2t`) are kept as they are.

    save_int8(head, folder)                       # config.json + model.int8.safetensors
    FSPADDraftModel.from_pretrained(folder)       # finds the int8 file and dequantizes it

Heads larger than `max_shard_bytes` (default 40 MiB, under the 50 MB per-file limit of git hosts) are split
into `model.int8-0000k-of-0000n.safetensors` shards listed by `model.int8.safetensors.index.json` (the same
`weight_map` layout as transformers' sharded checkpoints); a scale always sits in the shard of its matrix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .loading import INT8_INDEX_NAME, INT8_WEIGHTS_NAME, SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME, int8_weights_files

SCALE_SUFFIX = ".int8_scale"
_FORMAT = "fspad-int8-rowwise-v1"
MAX_SHARD_BYTES = 40 * 2**20


def rowwise_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, C]`` floats -> int8 ``[R, C]`` and float32 scales ``[R]`` (each row's absmax / 127).

    The rounding error of an element is at most half its row's scale: ``|x - q * s| <= absmax(row) / 254``.
    Used for head matrices (a row per output unit) and offline features (a row per token).
    """
    x32 = x.detach().float()
    scale = x32.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [R]; |q| <= 127 by construction
    return torch.round(x32 / scale[:, None]).to(torch.int8).contiguous(), scale.contiguous()


def from_rowwise_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`rowwise_int8` up to its rounding: ``q * scale`` per row, cast to ``dtype``."""
    return (q.float() * scale[:, None]).to(dtype)  # [R, C]


def quantize_int8(state_dict: dict[str, torch.Tensor], min_numel: int = 4096) -> dict[str, torch.Tensor]:
    """Floating 2-D tensors with >= `min_numel` elements -> int8 rows + float32 per-row scales."""
    out: dict[str, torch.Tensor] = {}
    for name, w in state_dict.items():
        if not (w.is_floating_point() and w.dim() == 2 and w.numel() >= min_numel):
            out[name] = w.contiguous()
            continue
        out[name], out[name + SCALE_SUFFIX] = rowwise_int8(w)
    return out


def dequantize_int8(stored: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_int8` (up to rounding): int8 rows times their scale, cast to `dtype`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        if scale is not None:
            out[name] = from_rowwise_int8(t, scale, dtype)
        elif t.is_floating_point():
            out[name] = t.to(dtype)
        else:
            out[name] = t
    return out


def shard_groups(stored: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Split the names of `stored` into consecutive groups of <= `max_shard_bytes` each (a tensor larger than
    the limit gets a group of its own); a matrix and its scale always share a group."""
    units: list[list[str]] = [[n] + ([n + SCALE_SUFFIX] if n + SCALE_SUFFIX in stored else [])
                              for n in stored if not n.endswith(SCALE_SUFFIX)]
    groups: list[list[str]] = []
    size = 0
    for unit in units:
        nbytes = sum(stored[n].numel() * stored[n].element_size() for n in unit)
        if not groups or size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].extend(unit)
        size += nbytes
    return groups


def save_int8(head, folder: str | os.PathLike, min_numel: int = 4096, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Save `head` (an FSPADDraftModel) as `config.json` + int8 weights (matrices of >= `min_numel`
    elements), in one file or, past `max_shard_bytes`, in shards plus an index; returns the weights
    file, or the index when sharded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head.config.save_pretrained(folder)
    return write_int8(quantize_int8(head.state_dict(), min_numel), folder, max_shard_bytes)


def write_int8(stored: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write quantized tensors (`quantize_int8`'s output, or an int8 head's stored tensors, to re-shard it
    unchanged) into `folder`, replacing any weights there."""
    remove_weights(folder)  # from_pretrained would prefer / mix stale files of another layout
    groups = shard_groups(stored, max_shard_bytes)
    metadata = {"format": "pt", "fspad_storage": _FORMAT}
    if len(groups) == 1:
        return _save_atomic({n: stored[n] for n in groups[0]}, folder / INT8_WEIGHTS_NAME, metadata)
    weight_map = {}
    for k, names in enumerate(groups, start=1):
        shard = f"model.int8-{k:05d}-of-{len(groups):05d}.safetensors"
        _save_atomic({n: stored[n] for n in names}, folder / shard, metadata)
        weight_map.update(dict.fromkeys(names, shard))
    total = sum(t.numel() * t.element_size() for t in stored.values())
    index = folder / INT8_INDEX_NAME  # written last: a folder without it has no (complete) sharded head
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metadata": {"total_size": total, "fspad_storage": _FORMAT}, "weight_map": weight_map},
                              indent=1) + "\n")
    os.replace(tmp, index)
    return index


def remove_weights(folder: Path) -> None:
    """Delete every weights file of a head folder (float or int8, single or sharded); config and card stay."""
    stale = [folder / SAFE_WEIGHTS_NAME, folder / SAFE_INDEX_NAME, folder / INT8_WEIGHTS_NAME, folder / INT8_INDEX_NAME]
    for path in stale + list(folder.glob("model*-of-*.safetensors")):
        path.unlink(missing_ok=True)


def read_int8(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The stored (still quantized) tensors of an int8 head folder, from one file or its shards."""
    stored: dict[str, torch.Tensor] = {}
    for path in int8_weights_files(Path(folder)):
        stored.update(load_file(str(path)))
    return stored


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
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
    stored = read_int8(folder)
    model = cls(config)
    missing, unexpected = model.load_state_dict(dequantize_int8(stored, dtype), strict=False)
    if missing or unexpected:
        source = folder / (INT8_WEIGHTS_NAME if (folder / INT8_WEIGHTS_NAME).is_file() else INT8_INDEX_NAME)
        raise ValueError(
            f"{source} does not match its config.json (missing: {missing}, unexpected: "
            f"{unexpected}); re-save the head with fspad_hf.head.storage.save_int8."
        )
    return model.to(dtype).eval()


__all__ = ["MAX_SHARD_BYTES", "dequantize_int8", "from_rowwise_int8", "load_int8", "quantize_int8", "read_int8",
           "remove_weights", "rowwise_int8", "save_int8", "shard_groups", "write_int8"]
