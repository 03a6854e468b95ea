"""`TreeSettings`: the one carrier of tree settings (head-config defaults, per-call keywords, `@T,D,K`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..head.configuration import FSPADConfig

# generate() keyword -> TreeSettings field; the head config stores the same names as defaults.
# KEYWORDS: the tree shape (what `@T,D,K` and the command line's --tree_* options set).
KEYWORDS = {"tree_total_tokens": "total_tokens", "tree_depth": "depth", "tree_top_k": "top_k"}
# Retrieval drafts merged into the tree (decoding/retrieval.py); retrieval_branches=0 turns them off.
RETRIEVAL_KEYWORDS = {"retrieval_branches": "retrieval_branches", "retrieval_length": "retrieval_length"}
# The tree policy (decoding/policy.py) and the cost model it prices trees with (per call only).
POLICY_KEYWORDS = {"tree_policy": "policy", "cost_model": "cost_model"}
POLICIES = ("static", "adaptive")
# Every generate() keyword TreeSettings carries (what route.py pops and tree_generate accepts).
ALL_KEYWORDS = {**KEYWORDS, **RETRIEVAL_KEYWORDS, **POLICY_KEYWORDS}


def config_defaults() -> dict:
    """`FSPADConfig`'s defaults of every carried keyword: the settings of head-free (retrieval-only) decoding
    (None for the per-call-only `cost_model`)."""
    params = inspect.signature(FSPADConfig.__init__).parameters
    return {kw: params[kw].default if kw in params else None for kw in ALL_KEYWORDS}


@dataclass(frozen=True)
class TreeSettings:
    """Tree shape for one generate() call.

    total_tokens: draft nodes kept for verification (the root is added on top).
    depth: maximum drafted tokens on one path.
    top_k: children expanded per frontier node, and frontier size per level.
    retrieval_branches: retrieved continuations merged into the tree per round (0 = no retrieval).
    retrieval_length: maximum tokens per retrieved continuation.
    policy: "static" (verify the tree above) or "adaptive" (decoding/policy.py: per round, how many
        nodes to verify and how deep to draft, from calibrated acceptance estimates and the cost model).
    cost_model: the `CostModel` the adaptive policy uses (None: `CostModel.for_target`).
    """

    total_tokens: int
    depth: int
    top_k: int
    retrieval_branches: int = 0
    retrieval_length: int = 8
    policy: str = "static"
    cost_model: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"tree_policy must be one of {POLICIES}, got {self.policy!r}.")
        if min(self.total_tokens, self.depth, self.top_k) < 1:
            raise ValueError(f"tree_total_tokens, tree_depth and tree_top_k must all be >= 1, got {self}.")
        if self.retrieval_branches < 0 or self.retrieval_length < 1:
            raise ValueError(
                f"retrieval_branches must be >= 0 (0 = off) and retrieval_length >= 1, got {self.retrieval_branches} "
                f"and {self.retrieval_length}."
            )

    @classmethod
    def resolve(cls, head_config, **overrides) -> TreeSettings:
        """Head-config defaults (`FSPADConfig`'s own defaults when `head_config` is None: head-free decoding),
        overridden by the non-None generate() keywords in `overrides`."""
        unknown = set(overrides) - set(ALL_KEYWORDS)
        if unknown:
            raise TypeError(f"unknown tree settings {sorted(unknown)}; expected {list(ALL_KEYWORDS)}")
        defaults = config_defaults()
        values = {field: getattr(head_config, kw, defaults[kw]) for kw, field in ALL_KEYWORDS.items()}
        values.update({ALL_KEYWORDS[kw]: v for kw, v in overrides.items() if v is not None})
        return cls(**{f: v if f in ("policy", "cost_model") else int(v) for f, v in values.items()})

    # standalone: omit (the adaptive policy needs the fspad-hf package)
    def adaptive(self, drafter, target, stats=None, head=None):
        """`drafter` wrapped in the adaptive policy, priced by this call's cost model or the machine's (cached);
        it records its predicted round times in `stats.predicted_ms`."""
        from .cost_model import CostModel
        from .policy import AdaptiveDrafter, learned_state

        cost = self.cost_model if self.cost_model is not None else CostModel.for_target(target, head)
        return AdaptiveDrafter(drafter, self, cost, stats=stats, memory=learned_state(target, head, cost, self))

    # standalone: omit (the assistant_model route)
    @staticmethod
    def pop_keywords(kwargs: dict) -> dict:
        """Remove the tree and retrieval keywords from a generate() kwargs dict and return them."""
        return {kw: kwargs.pop(kw) for kw in ALL_KEYWORDS if kw in kwargs}

    # standalone: omit (command line)
    @staticmethod
    def parse_suffix(spec: str) -> tuple[str, dict]:
        """`PATH[@T,D,K][+retrieval[N]][+adaptive]` -> (PATH, generate() keywords); no suffix -> (PATH, {}).

        No suffix: the head's own defaults (the adaptive policy with retrieval branches, unless its config
        says otherwise). `@T,D,K` is the static tree of that shape (total tokens, depth, top-k) without
        retrieval; `+retrieval[N]` merges N retrieved continuations into each tree (N defaults to 4);
        `+adaptive` turns on the adaptive policy (the tree shape is then its upper bound).
        """
        spec, *options = spec.split("+")
        keywords = {"tree_policy": "static", "retrieval_branches": 0} if "@" in spec else {}
        for option in options:
            if option == "adaptive":
                keywords["tree_policy"] = "adaptive"
            elif option.startswith("retrieval") and (option[len("retrieval"):] or "4").isdigit():
                keywords["retrieval_branches"] = int(option[len("retrieval"):] or 4)
            else:
                raise ValueError(f"{spec!r}: unknown suffix +{option}; use +retrieval, +retrievalN (e.g. +retrieval4) "
                                 "or +adaptive.")
        path, at, tree = spec.rpartition("@")
        if not at:
            return spec, keywords
        parts = tree.split(",")
        if len(parts) != 3 or not all(x.strip().isdigit() for x in parts):
            raise ValueError(f"{spec!r}: the tree suffix must be @TOTAL_TOKENS,DEPTH,TOP_K (e.g. @16,5,4).")
        return path, {**dict(zip(KEYWORDS, (int(x) for x in parts))), **keywords}

    # standalone: omit (not used by decoding)
    def as_keywords(self) -> dict:
        return {kw: getattr(self, field) for kw, field in ALL_KEYWORDS.items()}


__all__ = ["TreeSettings", "KEYWORDS", "RETRIEVAL_KEYWORDS", "POLICY_KEYWORDS", "POLICIES", "ALL_KEYWORDS",
           "config_defaults"]
