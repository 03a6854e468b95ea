"""`TreeSettings`: the one carrier of tree settings (head-config defaults, per-call keywords, `@T,D,K`)."""

from __future__ import annotations

from dataclasses import dataclass

# generate() keyword -> TreeSettings field; the head config stores the same names as defaults.
KEYWORDS = {"tree_total_tokens": "total_tokens", "tree_depth": "depth", "tree_top_k": "top_k"}


@dataclass(frozen=True)
class TreeSettings:
    """Tree shape for one generate() call.

    total_tokens: draft nodes kept for verification (the root is added on top).
    depth: maximum drafted tokens on one path.
    top_k: children expanded per frontier node, and frontier size per level.
    """

    total_tokens: int
    depth: int
    top_k: int

    def __post_init__(self):
        if min(self.total_tokens, self.depth, self.top_k) < 1:
            raise ValueError(f"tree_total_tokens, tree_depth and tree_top_k must all be >= 1, got {self}.")

    @classmethod
    def resolve(cls, head_config, **overrides) -> TreeSettings:
        """Head-config defaults, overridden by the non-None generate() keywords in `overrides`."""
        unknown = set(overrides) - set(KEYWORDS)
        if unknown:
            raise TypeError(f"unknown tree settings {sorted(unknown)}; expected {list(KEYWORDS)}")
        values = {field: getattr(head_config, kw) for kw, field in KEYWORDS.items()}
        values.update({KEYWORDS[kw]: v for kw, v in overrides.items() if v is not None})
        return cls(**values)

    # standalone: omit (the assistant_model route)
    @staticmethod
    def pop_keywords(kwargs: dict) -> dict:
        """Remove the tree keywords from a generate() kwargs dict and return them."""
        return {kw: kwargs.pop(kw) for kw in KEYWORDS if kw in kwargs}

    # standalone: omit (command line)
    @staticmethod
    def parse_suffix(spec: str) -> tuple[str, dict]:
        """`PATH@T,D,K` -> (PATH, generate() keywords); no suffix -> (PATH, {})."""
        path, at, tree = spec.rpartition("@")
        if not at:
            return spec, {}
        parts = tree.split(",")
        if len(parts) != 3 or not all(x.strip().isdigit() for x in parts):
            raise ValueError(f"{spec!r}: the tree suffix must be @TOTAL_TOKENS,DEPTH,TOP_K (e.g. @16,5,4).")
        return path, dict(zip(KEYWORDS, (int(x) for x in parts)))

    # standalone: omit (not used by decoding)
    def as_keywords(self) -> dict:
        return {kw: getattr(self, field) for kw, field in KEYWORDS.items()}


__all__ = ["TreeSettings", "KEYWORDS"]
