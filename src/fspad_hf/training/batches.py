"""The one collate of training batches: chat examples (online features) or feature-shard items (offline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    Returns `input_ids` (padded with `pad_token_id`), `loss_mask` (padded with 0) and `attention_mask`
    (1 on real tokens), all `[B, T]` long, plus `hidden_states` `[B, T, H]` (zeros on padding, storage
    dtype) when the items carry offline features.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; pass tokenizer.pad_token_id or tokenizer.eos_token_id")
    lengths = [len(example["input_ids"]) for example in batch]
    width = max(lengths)
    input_ids = torch.full((len(batch), width), int(pad_token_id), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    with_features = "hidden_states" in batch[0]
    if with_features:
        first = batch[0]["hidden_states"]
        hidden = torch.zeros((len(batch), width, first.shape[-1]), dtype=first.dtype)  # [B, T, H]
    for row, (example, n) in enumerate(zip(batch, lengths)):
        input_ids[row, :n] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        loss_mask[row, :n] = torch.as_tensor(example["loss_mask"], dtype=torch.long)
        attention_mask[row, :n] = 1
        if with_features:
            hidden[row, :n] = example["hidden_states"]
    out = {"input_ids": input_ids, "loss_mask": loss_mask, "attention_mask": attention_mask}
    if with_features:
        out["hidden_states"] = hidden
    return out


__all__ = ["collate"]
