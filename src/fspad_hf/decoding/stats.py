"""Acceptance statistics of one tree-decoding call (read them from `head.last_generation_stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationStats:
    """Per-call counters.

    accepted_lengths: drafted tokens accepted in each verification round (bonus token excluded).
    new_tokens_per_round: tokens emitted per round (accepted + bonus, cut by stopping criteria).
    draft_seconds / verify_seconds: wall time per round of drafting and of target verification
        (host wall clock; on CUDA it includes queued work only where a sync happened).
    position_accepts / position_trials: per draft depth p (index p - 1), how many rounds accepted the
        token at depth p, and how many rounds had a node at depth p.
    """

    prompt_length: int = 0
    settings: Any = None
    prefill_seconds: float = 0.0
    accepted_lengths: list[int] = field(default_factory=list)
    new_tokens_per_round: list[int] = field(default_factory=list)
    draft_seconds: list[float] = field(default_factory=list)
    verify_seconds: list[float] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)
    position_accepts: list[int] = field(default_factory=list)
    position_trials: list[int] = field(default_factory=list)

    def add_prefill(self, seconds: float) -> None:
        self.prefill_seconds += seconds

    def add_round(self, accepted: int, emitted: int, draft_s: float, verify_s: float, tree) -> None:
        self.accepted_lengths.append(accepted)
        self.new_tokens_per_round.append(emitted)
        self.draft_seconds.append(draft_s)
        self.verify_seconds.append(verify_s)
        self.tree_sizes.append(tree.num_nodes)
        depth = tree.max_depth
        while len(self.position_trials) < depth:
            self.position_trials.append(0)
            self.position_accepts.append(0)
        for p in range(depth):
            self.position_trials[p] += 1
            self.position_accepts[p] += int(p < accepted)

    @property
    def num_rounds(self) -> int:
        return len(self.accepted_lengths)

    @property
    def target_forwards(self) -> int:
        """Target forwards including the prefill."""
        return self.num_rounds + 1

    @property
    def mean_accepted_length(self) -> float:
        """tau: tokens per verification round, bonus included (plain decoding = 1.0)."""
        return (sum(self.accepted_lengths) + self.num_rounds) / self.num_rounds if self.num_rounds else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        return [a / t if t else 0.0 for a, t in zip(self.position_accepts, self.position_trials)]

    def summary(self) -> dict[str, Any]:
        rounds = max(self.num_rounds, 1)
        return {
            "rounds": self.num_rounds,
            "target_forwards": self.target_forwards,
            "new_tokens": 1 + sum(self.new_tokens_per_round),
            "tau": self.mean_accepted_length,
            "acceptance_per_position": self.acceptance_per_position,
            "draft_ms_per_round": 1000 * sum(self.draft_seconds) / rounds,
            "verify_ms_per_round": 1000 * sum(self.verify_seconds) / rounds,
            "prefill_ms": 1000 * self.prefill_seconds,
        }
