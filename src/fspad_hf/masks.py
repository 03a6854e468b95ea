"""Additive attention masks: pure tensor helpers shared by the head, decoding and training."""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.BoolTensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool `[Q, K]` -> additive float `[1, 1, Q, K]` (0 where allowed, dtype's min elsewhere).

    A float mask is used on purpose: the eager attention path adds it, while it would ignore a bool one.
    """
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def tree_additive_mask(ancestors: torch.BoolTensor, context_len: int, dtype: torch.dtype,
                       positions: torch.LongTensor | None = None, window: int | None = None) -> torch.Tensor:
    """`[1, 1, T + 1, context_len + T + 1]` additive mask of tree slots after `context_len` cached tokens: each
    slot sees the whole context and its ancestors `[T + 1, T + 1]` (itself included); with a sliding `window`,
    a query at position `positions[i]` only sees keys at positions > q - window (transformers' convention).
    Equal to `additive_mask(tree_attention_allowed(...))`, built in place (5 ops without a window)."""
    rows, low = ancestors.shape[0], torch.finfo(dtype).min
    out = torch.zeros(rows, context_len + rows, dtype=dtype, device=ancestors.device)
    out[:, context_len:].masked_fill_(~ancestors, low)
    if window is not None:
        key_pos = torch.cat([torch.arange(context_len, device=positions.device), positions])  # [context_len + T + 1]
        out.masked_fill_(key_pos[None, :] <= positions[:, None] - window, low)
    return out.view(1, 1, rows, context_len + rows)


def causal_additive_mask(q_len: int, past_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[1, 1, q_len, past_len + q_len]` additive mask: query i sees keys 0 .. past_len + i."""
    k = torch.arange(past_len + q_len, device=device)
    q = torch.arange(q_len, device=device) + past_len
    return additive_mask(k[None, :] <= q[:, None], dtype)


__all__ = ["additive_mask", "causal_additive_mask", "tree_additive_mask"]
