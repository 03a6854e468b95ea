"""Training objective of the draft head (METHOD.md sections 1-3), written against the drafting interface
(`fspad_hf.head.interface`): `fuse_context`, `fuse_draft`, `draft_step`, `draft_logits`.

Alignment. For a sequence x_0..x_{T-1} with target features f_0..f_{T-1}, head position t reads
(f_t, x_{t+1}) and predicts f_{t+1}, whose logits draft x_{t+2}. Position t therefore counts in the
loss iff x_{t+2} is an assistant token (`loss_mask[t + 2]`); the last position has no x_{t+2}.

Unrolling (HASS scheme, used by PosS). Step 0 is teacher forcing. At step k each position's input
feature is the step-(k-1) output at the previous position (detached) with the true tokens; the query
at position t sees keys computed from true features for positions <= t - k and from the step-j inputs
at position t - k + j (j = 1..k). All blocks are run through the step's layer (its own K/V), exactly
as drafting recomputes a new specialist's keys. Summing the per-step losses and calling backward once
gives the same gradients as one backward per step, because step inputs are detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..head.interface import DraftStep


@dataclass
class LossWeights:
    feature: float = 1.0  # SmoothL1 on the regress half
    logits: float = 0.1  # soft cross-entropy on the predict half
    step_decay: float = 1.0  # unroll step k (0-based) weighs step_decay ** k in the total (1.0: equal weights)

    def step_weight(self, k: int) -> float:
        """Weight of unroll step k in the total loss (step 0, teacher forcing, always weighs 1)."""
        return 1.0 if k == 0 else float(self.step_decay) ** k


def feature_noise(features: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Uniform input-feature noise `(U(0,1) - 0.5) * amplitude * 512 / seq_len` (METHOD.md section 1)."""
    if amplitude <= 0:
        return features
    scale = amplitude * 512 / features.shape[1]
    return features + (torch.rand_like(features) - 0.5) * scale


def unroll_mask(length: int, steps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask `[1, 1, (k+1)L, (k+1)L]` over k+1 stacked blocks of L positions (k = `steps`).

    Query (block b, position t) may see key (block c, position s) iff c == 0 and s <= t - b, or
    1 <= c <= b and s == t - b + c. Block b's rows are exactly the view of unroll step b.
    """
    t = torch.arange(length, device=device)
    blocks = []
    for b in range(steps + 1):
        row = []
        for c in range(steps + 1):
            if c == 0:
                allowed = t[None, :] <= t[:, None] - b
            elif c <= b:
                allowed = t[None, :] == t[:, None] - b + c
            else:
                allowed = torch.zeros(length, length, dtype=torch.bool, device=device)
            row.append(allowed)
        blocks.append(torch.cat(row, dim=1))
    allowed = torch.cat(blocks, dim=0)
    # A fully masked row (early positions of late blocks) would give NaNs: let it see itself.
    allowed |= torch.eye(allowed.shape[0], dtype=torch.bool, device=device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def position_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """`[B, T-1]` float: head position t counts iff token t+2 is an assistant token."""
    shifted = torch.zeros_like(loss_mask[:, 1:], dtype=torch.float32)
    shifted[:, :-1] = loss_mask[:, 2:].float()
    return shifted


def step_terms(head, predict, regress, target_features, target_probs, mask, weights: LossWeights) -> tuple[torch.Tensor, dict]:
    """Loss and metrics of one unroll step over N selected positions.

    predict / regress / target_features: `[N, H]`; target_probs: `[N, V]`; mask: `[N]` float (0 drops a row).
    Only loss positions are passed in, so the LM head never runs on prompt tokens.
    """
    denom = mask.sum().clamp_min(1.0)
    reg = F.smooth_l1_loss(regress.float(), target_features.float(), reduction="none").mean(-1)  # [N]
    reg = (reg * mask).sum() / denom
    log_q = torch.log_softmax(head.draft_logits(predict).float(), dim=-1)  # [N, V]
    ce = (-(target_probs * log_q).sum(-1) * mask).sum() / denom
    acc = ((log_q.argmax(-1) == target_probs.argmax(-1)).float() * mask).sum() / denom
    loss = weights.feature * reg + weights.logits * ce
    return loss, {"feature_loss": reg.detach(), "logit_loss": ce.detach(), "acc": acc.detach(), "tokens": denom.detach()}


def unrolled_outputs(head, input_ids: torch.LongTensor, features: torch.Tensor, steps: int, noise: float = 0.0):
    """Per-step head outputs (`DraftStep` with `[B, T-1, H]` halves) of the k-step unrolled draft.

    Step k's output at position t is what drafting produces for draft position k + 1 when the context
    ends at t - k (true features up to there, then k fed-back predictions along the true tokens).
    """
    features = features.to(head.dtype)
    length = input_ids.shape[1] - 1
    next_tokens = input_ids[:, 1:]  # x_{t+1}  # [B, L]
    positions = torch.arange(length, device=input_ids.device)[None]
    blocks = [head.fuse_context(next_tokens, feature_noise(features[:, :-1], noise))]
    outputs = []
    for k in range(steps):
        if k > 0:
            previous = outputs[-1].feedback
            fed_back = torch.cat([features[:, :1], previous[:, :-1]], dim=1).detach()  # output at t-1  # [B, L, H]
            blocks.append(head.fuse_draft(next_tokens, fed_back))
        fused = torch.cat(blocks, dim=1)  # [B, (k+1)L, H]
        mask = unroll_mask(length, k, fused.dtype, fused.device)  # k = 0: plain causal mask
        out = head.draft_step(head.specialist_for_position(k + 1), fused, positions.repeat(1, k + 1), mask, None)
        outputs.append(DraftStep(predict=out.predict[:, -length:], feedback=out.feedback[:, -length:]))
    return outputs


def draft_objective(
    head,
    input_ids: torch.LongTensor,
    features: torch.Tensor,
    loss_mask: torch.Tensor,
    steps: int = 1,
    weights: LossWeights | None = None,
    noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss over `steps` unroll steps (1 = plain teacher forcing) and per-step metrics.

    Step k's loss is weighted `weights.step_weight(k)` = step_decay ** k (EAGLE-3 / HASS style decaying
    weights; the default 1.0 gives every step the same weight, METHOD.md section 3). A step of weight 0
    is still computed for its metrics but adds nothing to the loss.

    input_ids `[B, T]`, features `[B, T, H]` (target features, post final norm), loss_mask `[B, T]`.
    Metrics are keyed `feature_loss_p{k}`, `logit_loss_p{k}`, `acc_p{k}` for draft position k = step + 1.
    """
    weights = weights or LossWeights()
    select = position_mask(loss_mask) > 0  # [B, L]: only these positions enter the loss
    length = select.shape[1]
    step_of_row = torch.arange(length, device=select.device).expand_as(select)[select]  # [N] position t per row
    target_features = features[:, 1:].to(head.dtype)[select]  # f_{t+1}  # [N, H]
    with torch.no_grad():
        target_probs = torch.softmax(head.draft_logits(target_features).float(), dim=-1)  # [N, V]
    total, metrics = 0.0, {}
    for k, out in enumerate(unrolled_outputs(head, input_ids, features, steps, noise)):
        row_mask = (step_of_row >= k).float()  # positions t < k have no k-step draft history
        loss, m = step_terms(head, out.predict[select], out.feedback[select], target_features, target_probs, row_mask, weights)
        total = total + weights.step_weight(k) * loss
        metrics.update({f"{name}_p{k + 1}": value for name, value in m.items() if name != "tokens"})
    return total, metrics


__all__ = ["LossWeights", "feature_noise", "unroll_mask", "position_mask", "step_terms", "unrolled_outputs", "draft_objective"]
