"""What rounds really cost and yield, for the adaptive policy (decoding/policy.py, rule steps 5 and 7).

- `CostCorrection` (step 5): the cost tables' predictions against the loop's measured times.
- `RoundRates` (step 7): realised tokens per ms per kind of round: rounds where the head drafted
  (`DRAFTED`), rounds without the head that verified a retrieved tree (`TREE`), plain steps (`UNDRAFTED`:
  no head, no tree), and the *retrieval shadow* of each drafted round (`SHADOW`: what retrieval alone
  would have yielded on the same text, `shadow_tokens`).
- `drafting_loses` (step 7): whether the head's drafted rounds realise fewer tokens per ms than the best
  alternative without it; `retrieval_loses`: whether retrieved trees verified without the head realise
  fewer than plain steps.

Plain host floats (the times are host measurements); no tensor is read here except in `shadow_tokens`,
which stays on the device.
"""

from __future__ import annotations

import torch

DRAFTED, UNDRAFTED, SHADOW, TREE = "drafted", "undrafted", "retrieval shadow", "retrieval tree"


def _ema(old: float, new: float, weight: float) -> float:
    """Host-float EMA step (`weight` on the past; 0 replaces it)."""
    return weight * old + (1.0 - weight) * new


class CostCorrection:
    """Measured vs predicted round times (rule step 5)."""

    SCALE_RANGE = (0.25, 4.0)

    def __init__(self, decay: float):
        self.decay = decay
        self.draft_measured = self.draft_predicted = 0.0  # EMAs (ms) over rounds that drafted
        self.verify_offset = 0.0  # ms added to every verification
        self.other_ms = 0.0  # ms per round outside drafting and verification
        self.rounds = 0

    def draft_scale(self) -> float:
        if self.draft_predicted <= 0.0:
            return 1.0
        low, high = self.SCALE_RANGE
        return min(high, max(low, self.draft_measured / self.draft_predicted))

    def verify_curve(self, curve: torch.Tensor) -> torch.Tensor:
        """The table's verify curve `[K]` corrected by the measured offset, never below half the table."""
        return torch.maximum(curve + self.verify_offset, 0.5 * curve)

    def verify_ms(self, table_ms: float) -> float:
        """One entry of `verify_curve` from the table's host float (equal bits: the same float64 operations)."""
        return max(table_ms + self.verify_offset, 0.5 * table_ms)

    def update(self, predicted_draft: float, predicted_verify: float, draft_ms: float, verify_ms: float,
               round_ms: float | None) -> None:
        """One round: the table's (uncorrected) predictions and what was measured (`round_ms`: wall time from
        this round's draft to the next one's, None when unknown)."""
        w = self.decay if self.rounds else 0.0  # the first round replaces the priors
        if predicted_draft > 0.0:
            wd = self.decay if self.draft_predicted > 0.0 else 0.0
            self.draft_measured = _ema(self.draft_measured, draft_ms, wd)
            self.draft_predicted = _ema(self.draft_predicted, predicted_draft, wd)
        self.verify_offset = _ema(self.verify_offset, verify_ms - predicted_verify, w)
        if round_ms is not None:
            self.other_ms = _ema(self.other_ms, max(0.0, round_ms - draft_ms - verify_ms), w)
        self.rounds += 1


class RoundRates:
    """Realised tokens per ms per kind of round (`DRAFTED`, `UNDRAFTED`, `SHADOW`, `TREE`; rule step 7).

    EMAs (weight `decay`) of emitted tokens and of wall ms per round, kept apart per kind. `SHADOW` is
    updated on the same rounds as `DRAFTED` (one shadow per drafted round, with retrieval on), so the
    two EMAs weigh the same rounds alike: a paired comparison on the same text.
    """

    KINDS = (DRAFTED, UNDRAFTED, SHADOW, TREE)

    def __init__(self, decay: float):
        self.decay = decay
        self.tokens = dict.fromkeys(self.KINDS, 0.0)  # kind -> EMA of tokens per round
        self.ms = dict.fromkeys(self.KINDS, 0.0)  # kind -> EMA of round wall ms
        self.rounds = dict.fromkeys(self.KINDS, 0)

    def update(self, kind: str, tokens: float, ms: float) -> None:
        w = self.decay if self.rounds[kind] else 0.0  # the first round of a kind replaces the zero start
        self.tokens[kind] = _ema(self.tokens[kind], tokens, w)
        self.ms[kind] = _ema(self.ms[kind], ms, w)
        self.rounds[kind] += 1

    def new_call(self) -> None:
        """A new `generate()` call: the kinds whose yield depends on the text (`DRAFTED`, `SHADOW`, `TREE`) count
        their rounds from zero, so the guard decides on this call's own rounds (`guard_rounds` of them) and the
        first of each kind replaces its EMA. `UNDRAFTED` (a plain step: one token at the machine's cost) is kept.

        Why: the guard used to carry over. After a turn retrieval copied whole (Spec-Bench extraction, writing
        turn 2), the next call began with the head judged losing and kept it off behind thinning probes: on a
        Zen 5 EPYC, bf16, the 12,000-step SmolLM2 head realised tau 1.09 on a coding turn where the static tree
        realised 3.32 (benchmarks/results/grid-epyc-zen5-avx512bf16-heads12k, question 122)."""
        for kind in (DRAFTED, SHADOW, TREE):
            self.rounds[kind] = 0

    def rate(self, kind: str) -> float | None:
        """Tokens per ms of that kind of round, None before one was measured."""
        return self.tokens[kind] / self.ms[kind] if self.rounds[kind] and self.ms[kind] > 0 else None


def plain_rate(rates: RoundRates, plain_ms: float) -> float:
    """Tokens per ms of a plain step: measured (`UNDRAFTED` rounds) once one was, else one token per `plain_ms`."""
    measured = rates.rate(UNDRAFTED)
    return measured if measured is not None else 1.0 / plain_ms


def drafting_loses(rates: RoundRates, guard_rounds: int, plain_ms: float) -> bool:
    """Rule step 7: after `guard_rounds` drafted rounds, whether they realised fewer tokens per ms than the best
    alternative without the head: a plain step (`plain_rate`) or, once `guard_rounds` shadows are known
    (retrieval on), their retrieval shadow."""
    if rates.rounds[DRAFTED] < guard_rounds:
        return False
    alternative = plain_rate(rates, plain_ms)
    if rates.rounds[SHADOW] >= guard_rounds:
        alternative = max(alternative, rates.rate(SHADOW))
    return rates.rate(DRAFTED) < alternative


def retrieval_loses(rates: RoundRates, guard_rounds: int, plain_ms: float) -> bool:
    """Rule step 7, without the head: after `guard_rounds` rounds that verified a retrieved tree, whether they
    realised fewer tokens per ms than plain steps (`plain_rate`)."""
    return rates.rounds[TREE] >= guard_rounds and rates.rate(TREE) < plain_rate(rates, plain_ms)


def shadow_estimates(tree, retrieval_rate: torch.Tensor) -> torch.Tensor:
    """`[T]` acceptance estimates of the nodes retrieval proposed (`tree.retrieved`, shared ones included), priced
    as retrieval nodes (their match class and depth), capped by the ancestors; -inf for the head's own nodes, so
    that `choose_size` never counts them (a retrieved node's ancestors are all retrieved: paths start at the root).

    What the policy would have priced the tree at had retrieval alone drafted it (rule step 7's shadow).
    retrieval_rate: `[M, D + 1]` (`Calibration.retrieval_rate`).
    """
    depth = tree.depth.clamp(max=retrieval_rate.shape[1] - 1)
    match = getattr(tree, "match", None)
    cls = torch.zeros_like(depth) if match is None else match.clamp(0, retrieval_rate.shape[0] - 1)
    p = torch.where(tree.retrieved, retrieval_rate[cls, depth], -torch.inf)
    return torch.where(tree.ancestors[1:, 1:], p[None, :], 1.0).amin(dim=1)  # min over ancestors (itself included)


def shadow_tokens(in_shadow: torch.BoolTensor, path: torch.LongTensor) -> torch.Tensor:
    """Tokens retrieval alone would have emitted this round (0-dim, on the device): the bonus plus the leading
    accepted nodes of `path` (slots, root first) that its own tree (`in_shadow`, `[T]` per node) held.

    Exact for the nodes both trees hold (the target's choice at each slot does not depend on the tree), so
    exact for greedy decoding and for the same draws when sampling; a lower bound where retrieval's tree
    would have reached past the end of the verified path (its nodes the merged tree pruned).
    """
    run = in_shadow[path[1:] - 1].long().cumprod(0).sum() if path.shape[0] > 1 else path.new_zeros(())
    return 1 + run


__all__ = ["CostCorrection", "RoundRates", "drafting_loses", "retrieval_loses", "plain_rate", "shadow_estimates",
           "shadow_tokens", "DRAFTED", "UNDRAFTED", "SHADOW", "TREE"]
