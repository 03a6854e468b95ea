"""Acceptance statistics of one tree-decoding call (read them from `head.last_generation_stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def tau(new_tokens: int, forwards: int, turns: int = 1) -> float:
    """Mean accepted length: new tokens per target forward after each turn's prefill, bonus included.

    Each turn's prefill forward yields one token, so `(new_tokens - turns) / (forwards - turns)`; plain
    decoding gives 1.0 (also when no forward followed a prefill). The one definition used by the stats,
    the benchmark and the `evaluate` metric.
    """
    return (new_tokens - turns) / (forwards - turns) if forwards > turns else 1.0


@dataclass
class GenerationStats:
    """Per-call counters.

    accepted_lengths: drafted tokens accepted in each verification round (bonus token excluded).
    new_tokens_per_round: tokens emitted per round (accepted + bonus, cut by stopping criteria).
    draft_seconds / verify_seconds: wall time per round of drafting and of target verification
        (host wall clock; on CUDA it includes queued work only where a sync happened).
    position_accepts / position_trials: per draft depth p (index p - 1), how many rounds accepted the
        token at depth p, and how many rounds had a node at depth p.
    tree_sizes: draft nodes verified per round (the root excluded).
    retrieval_nodes: per round, how many of those nodes came from retrieval only (decoding/retrieval.py;
        a node both the head and retrieval proposed counts as a head node). All 0 without retrieval.
    accepted_from_retrieval: per round, how many accepted drafted tokens were retrieval nodes (the rest of
        `accepted_lengths` came from head nodes; see `accepted_from_head`).
    predicted_ms: per round, the adaptive policy's predicted draft + verify time (ms) of the chosen tree
        (decoding/policy.py fills it), to compare with `draft_seconds + verify_seconds`; empty for the static tree.
    position_* and retrieval_* are complete after `finish()` (the decoding loop calls it at the end).
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
    retrieval_nodes: list[int] = field(default_factory=list)
    accepted_from_retrieval: list[int] = field(default_factory=list)
    predicted_ms: list[float] = field(default_factory=list)
    # per round (accepted, [deepest node, retrieval nodes?, of them accepted?] on the device), read by `finish()`
    pending: list = field(default_factory=list, repr=False, compare=False)

    def add_prefill(self, seconds: float) -> None:
        self.prefill_seconds += seconds

    def add_round(self, accepted: int, emitted: int, draft_s: float, verify_s: float, tree, path=None) -> None:
        """One verification round; `path` (accepted slots, root first) attributes accepted tokens to their source.

        No host sync: the position and retrieval counters of the round are filled in by `finish()`.
        """
        source = getattr(tree, "source", None)  # per node: 0 = head, 1 = retrieval (retrieval.MergedTree)
        pending = [tree.depth.max()] if tree.num_nodes else [tree.depth.new_zeros(())]  # deepest node
        if source is not None and path is not None and source.numel():
            pending += [source.sum(), source[path[1:] - 1].sum()]  # retrieval nodes, of them accepted
        self.pending.append((accepted, torch.stack(pending)))
        self.accepted_lengths.append(accepted)
        self.new_tokens_per_round.append(emitted)
        self.draft_seconds.append(draft_s)
        self.verify_seconds.append(verify_s)
        self.tree_sizes.append(tree.num_nodes)

    def finish(self) -> None:
        """Read the pending per-round counters (one host sync); the decoding loop calls it once at the end."""
        pending, self.pending = self.pending, []
        values = iter(torch.cat([v for _, v in pending]).tolist() if pending else ())
        for accepted, v in pending:
            depth, (nodes, taken) = next(values), ((next(values), next(values)) if v.shape[0] == 3 else (0, 0))
            self.retrieval_nodes.append(nodes)
            self.accepted_from_retrieval.append(taken)
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
        """tau: tokens per verification round, bonus included (plain decoding = 1.0; 0.0 before any round)."""
        if not self.num_rounds:
            return 0.0
        return tau(1 + sum(self.accepted_lengths) + self.num_rounds, self.target_forwards)

    # standalone: omit (reporting only)
    @property
    def accepted_from_head(self) -> list[int]:
        """Per round, accepted drafted tokens that were head nodes."""
        self.finish()
        return [a - r for a, r in zip(self.accepted_lengths, self.accepted_from_retrieval)]

    @property
    def acceptance_per_position(self) -> list[float]:
        self.finish()
        return [a / t if t else 0.0 for a, t in zip(self.position_accepts, self.position_trials)]

    # standalone: omit (reporting only)
    @property
    def cost_model_error(self) -> float | None:
        """Mean relative error (predicted - measured) / measured of the round times the policy predicted."""
        pairs = [(p, 1000 * (d + v)) for p, d, v in zip(self.predicted_ms, self.draft_seconds, self.verify_seconds)
                 if d + v > 0]
        return sum((p - m) / m for p, m in pairs) / len(pairs) if pairs else None

    # standalone: omit (reporting only)
    def summary(self) -> dict[str, Any]:
        self.finish()
        rounds = max(self.num_rounds, 1)
        return {
            "rounds": self.num_rounds,
            "target_forwards": self.target_forwards,
            "new_tokens": 1 + sum(self.new_tokens_per_round),
            "tau": self.mean_accepted_length,
            "acceptance_per_position": self.acceptance_per_position,
            "tree_nodes_per_round": sum(self.tree_sizes) / rounds,
            "retrieval_nodes_per_round": sum(self.retrieval_nodes) / rounds,
            "accepted_from_retrieval": sum(self.accepted_from_retrieval),
            "accepted_from_head": sum(self.accepted_from_head),
            "draft_ms_per_round": 1000 * sum(self.draft_seconds) / rounds,
            "verify_ms_per_round": 1000 * sum(self.verify_seconds) / rounds,
            "prefill_ms": 1000 * self.prefill_seconds,
            "cost_model_error": self.cost_model_error,
        }
