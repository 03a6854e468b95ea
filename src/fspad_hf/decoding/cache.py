"""KV-cache surgery for tree decoding: keep only the accepted path, drop draft entries."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache

from ..compat import is_full_cache_layer


def _layers(cache: DynamicCache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"fspad_hf needs a DynamicCache with per-layer storage, got {type(cache).__name__}.")
    for layer in layers:
        if not is_full_cache_layer(layer):
            raise TypeError(
                f"fspad_hf keeps only full (non-sliding, non-quantized) cache layers, got {type(layer).__name__}: "
                "tree tokens must be removable from every layer."
            )
    return layers


def cache_length(cache: Cache) -> int:
    return cache.get_seq_length() if cache is not None else 0


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    for layer in _layers(cache):
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def compact_cache(cache: DynamicCache, context_len: int, keep_slots: torch.LongTensor, prefix: bool = False) -> None:
    """Keep positions `[0, context_len)` plus the tree slots `keep_slots` (offsets after the context).

    The layers hold `context_len + T + 1` positions after a tree forward; the accepted path's slots are
    gathered along the sequence axis so the cache equals a fresh forward over the accepted sequence.
    `prefix`: the caller knows `keep_slots == [0, 1, .., a]` (`Acceptance.prefix`): a crop is the same.
    """
    if prefix:
        return truncate_cache(cache, context_len + keep_slots.shape[0])
    keep = keep_slots.to(torch.long) + context_len
    end = context_len + keep.numel()
    for layer in _layers(cache):
        if not (layer.is_initialized and layer.keys.numel()):
            continue
        index = keep.to(layer.keys.device)
        # Move the accepted slots right after the context (in place: only a + 1 positions are copied),
        # then drop the rest. Slots are increasing and >= their destination, so the gather is read first.
        for name in ("keys", "values"):
            states = getattr(layer, name)  # [B, heads, context_len + T + 1, head_dim]
            states[..., context_len:end, :] = states.index_select(-2, index)
            setattr(layer, name, states[..., :end, :])


__all__ = ["truncate_cache", "compact_cache", "cache_length"]
