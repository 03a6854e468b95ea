"""The drafting interface: what the tree drafter, the retrieval merge and the losses need from a head.

A head kind (FSPAD / EAGLE-2 / PosS today, EAGLE-3 next) implements these methods; nothing outside
`head/` reaches into a head's modules. Conventions (see decoding/drafter.py for the full picture):

- Context entry t pairs the target's feature(s) of token t with the next token `x_{t+1}`.
- A draft step maps fused inputs `[B, T, H]` to a `DraftStep`: `predict` (source of the draft
  logits) and `feedback` (the head's stand-in for the next target feature, fed back as the input
  feature of the next draft level).
- Draft logits live in the draft vocabulary; `to_target_ids` maps draft ids to target ids.
- PosS: draft position p (1-based) is served by specialist `specialist_for_position(p)`; every
  specialist keeps its own keys/values in the shared draft cache (layer index = specialist index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers.cache_utils import Cache


@dataclass
class DraftStep:
    """Output of one draft step.

    predict: `[B, T, H]` o_p, the draft-logits source.
    feedback: `[B, T, H]` o_r, aligned to the next target feature and fed back while drafting
        (equals `predict` for heads without partial alignment).
    """

    predict: torch.Tensor
    feedback: torch.Tensor


# standalone: omit (a typing protocol: decoding names it in annotations only)
@runtime_checkable
class DraftingHead(Protocol):
    """The methods every head kind implements (all shapes batch-first)."""

    @property
    def num_specialists(self) -> int:
        """Number of draft layers with their own cache entries (PosS specialists; 1 for a plain head)."""

    @property
    def target_feature_layers(self) -> tuple[int, ...] | None:
        """Target decoder layers whose outputs the head fuses (None: the post-final-norm feature only)."""

    def specialist_for_position(self, position: int) -> int:
        """Index of the specialist that drafts draft position `position` (1-based)."""

    def fuse_context(self, next_tokens: torch.LongTensor, target_features: torch.Tensor) -> torch.Tensor:
        """Fused inputs `[B, T, H]` for context entries: target features `[B, T, H_f]` + next tokens `[B, T]`."""

    def fuse_draft(self, next_tokens: torch.LongTensor, feedback: torch.Tensor) -> torch.Tensor:
        """Fused inputs `[B, T, H]` for draft entries: the parent's `feedback` `[B, T, H]` + the node's token."""

    def draft_step(
        self,
        specialist: int,
        fused: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> DraftStep:
        """Run specialist `specialist` on fused inputs `[B, T, H]`.

        position_ids `[B|1, T]`; attention_mask additive float `[B|1, 1, T, past + T]`; the step's keys
        and values are appended to `cache` (layer `specialist`) when a cache is given.
        """

    def draft_logits(self, predict: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary for `predict` `[..., H]` -> `[..., V_draft]`."""

    def to_target_ids(self, draft_ids: torch.LongTensor) -> torch.LongTensor:
        """Map draft-vocabulary ids to target-vocabulary ids (identity for a full-vocabulary head)."""


__all__ = ["DraftStep", "DraftingHead"]
