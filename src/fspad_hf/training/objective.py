"""`DraftObjective`: the module a Trainer optimises, i.e. a head (plain or PEFT-wrapped) plus its loss.

The head's own `forward` is inference-only. Training calls `losses.draft_objective(head, batch)`, and
this wrapper's `forward` is where that call happens, so data-parallel wrappers (DDP) see one forward
per step and synchronise gradients as usual. Checkpoints stay the head's own `save_pretrained`
output (or the PEFT adapter): see `FSPADTrainer._save`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..head.modeling import unwrap_head
from .losses import LossWeights, draft_objective


class DraftObjective(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # FSPADDraftModel, or a PEFT model wrapping one

    @property
    def head(self):
        return unwrap_head(self.model)

    def forward(
        self,
        input_ids: torch.LongTensor,
        hidden_states: torch.Tensor,
        loss_mask: torch.Tensor,
        unroll_steps: int = 1,
        loss_weights: LossWeights | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, per-position metrics); input-feature noise only in training mode."""
        head = self.head
        noise = head.config.feature_noise if self.training else 0.0
        return draft_objective(head, input_ids, hidden_states, loss_mask, unroll_steps, loss_weights, noise)


__all__ = ["DraftObjective"]
