"""Additive attention masks: pure tensor helpers shared by the head, decoding and training."""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.BoolTensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool `[Q, K]` -> additive float `[1, 1, Q, K]` (0 where allowed, dtype's min elsewhere).

    A float mask is used on purpose: the eager attention path adds it, while it would ignore a bool one.
    """
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def causal_additive_mask(q_len: int, past_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[1, 1, q_len, past_len + q_len]` additive mask: query i sees keys 0 .. past_len + i."""
    k = torch.arange(past_len + q_len, device=device)
    q = torch.arange(q_len, device=device) + past_len
    return additive_mask(k[None, :] <= q[:, None], dtype)


__all__ = ["additive_mask", "causal_additive_mask"]
