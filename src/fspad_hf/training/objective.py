"""`DraftObjective`: the module a Trainer optimises, i.e. a head (plain or PEFT-wrapped) plus its loss;
`GroupObjective`: several heads learning from the same batches (one target forward feeds them all).

The head's own `forward` is inference-only. Training calls `losses.draft_objective(head, batch)`, and
this wrapper's `forward` is where that call happens, so data-parallel wrappers (DDP) see one forward
per step and synchronise gradients as usual. Checkpoints stay the head's own `save_pretrained`
output (or the PEFT adapter): see `FSPADTrainer._save`.
"""

from __future__ import annotations

from collections.abc import Mapping

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


class GroupObjective(nn.Module):
    """Heads trained together: every batch's target features are computed once and each head learns from them.

    The heads share no parameter, so the summed loss gives each head exactly its own gradients. AdamW and
    value clipping act per parameter, so with norm clipping off (the default) this is the same as separate
    runs over the same batch order, except that the feature-noise draws differ; the cost per step is one
    target forward instead of one per head. Metrics are prefixed with the head's name (`fspad_acc_p1`).
    """

    def __init__(self, models: Mapping[str, nn.Module]):
        super().__init__()
        if len(models) < 2:
            raise ValueError(f"A head group needs at least two heads, got {len(models)}: train a single head directly.")
        self.members = nn.ModuleDict({name: DraftObjective(m) for name, m in models.items()})

    @property
    def heads(self) -> dict:
        return {name: member.head for name, member in self.members.items()}

    def forward(
        self,
        input_ids: torch.LongTensor,
        hidden_states: torch.Tensor,
        loss_mask: torch.Tensor,
        unroll_steps: int = 1,
        loss_weights: LossWeights | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, metrics = 0.0, {}
        for name, member in self.members.items():
            loss, parts = member(input_ids, hidden_states, loss_mask, unroll_steps, loss_weights)
            total = total + loss
            metrics.update({f"{name}_{key}": value for key, value in parts.items()})
        return total, metrics


__all__ = ["DraftObjective", "GroupObjective"]
