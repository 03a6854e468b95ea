"""Pure tensor functions for EAGLE-2 dynamic draft trees (METHOD.md section 4). No model needed.

Conventions. A verification tree has `T + 1` slots: slot 0 is the root (the last accepted token,
already known), slots 1..T are draft nodes ordered so that every ancestor precedes its descendants.
`parents[j - 1]` is the slot of node j's parent (0 = root), `depth[j - 1]` its depth (root = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    """A draft tree ready for verification (all tensors on the drafting device).

    tokens: `[T]` node token ids (target vocabulary), slots 1..T.
    parents: `[T]` parent slot of each node (0 = root).
    depth: `[T]` depth of each node (1 = child of the root).
    ancestors: `[T + 1, T + 1]` bool, `ancestors[i, j]` = slot j is slot i or one of its ancestors.
    scores: `[T]` cumulative draft log-probabilities (informational).
    """

    tokens: torch.LongTensor
    parents: torch.LongTensor
    depth: torch.LongTensor
    ancestors: torch.BoolTensor
    scores: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.num_nodes else 0


def ancestor_mask(parents: torch.LongTensor, max_depth: int) -> torch.BoolTensor:
    """`[T + 1, T + 1]` mask with `mask[j] = onehot(j) | mask[parent(j)]` (slot 0 = root).

    Computed by walking every node up `max_depth` times at once (a loop over depth, not nodes).
    """
    t = parents.shape[0]
    slots = torch.arange(t + 1, device=parents.device)
    parent_of = torch.cat([slots[:1], parents])  # [T + 1]; the root is its own parent
    mask = torch.zeros(t + 1, t + 1, dtype=torch.bool, device=parents.device)
    cur = slots
    mask[slots, cur] = True
    for _ in range(max_depth):
        cur = parent_of[cur]
        mask[slots, cur] = True
    return mask


def select_tree(
    tokens: torch.LongTensor,
    scores: torch.Tensor,
    parents: torch.LongTensor,
    depth: torch.LongTensor,
    total_tokens: int,
    max_depth: int | None = None,
) -> DraftTree:
    """Re-rank all created nodes and keep the `total_tokens` best as a tree (EAGLE-2 step 3).

    tokens/scores/parents/depth: `[N]` over created nodes in creation order (a parent is always
    created before its children); `parents` index created nodes, -1 = root. A child's cumulative
    log-probability never exceeds its parent's; ties are broken towards shallower nodes, so the kept
    set is closed under ancestors. `max_depth` (the deepest created level, if known) avoids a host sync.
    """
    n = tokens.shape[0]
    k = min(total_tokens, n)
    by_depth = torch.argsort(depth, stable=True)  # shallow first, so stable sort keeps parents first on ties
    order = by_depth[torch.argsort(scores[by_depth], descending=True, stable=True)]
    kept = torch.sort(order[:k]).values  # creation order = ancestors first  # [T]
    slot_of = torch.full((n + 1,), -1, dtype=torch.long, device=tokens.device)
    slot_of[kept] = torch.arange(1, k + 1, device=tokens.device)
    slot_of[n] = 0  # parents == -1 (root) index the last entry
    new_parents = slot_of[parents[kept]]
    kept_depth = depth[kept]
    return DraftTree(
        tokens=tokens[kept],
        parents=new_parents,
        depth=kept_depth,
        ancestors=ancestor_mask(new_parents, max_depth if max_depth is not None else (int(kept_depth.max()) if k else 0)),
        scores=scores[kept],
    )


def tree_attention_allowed(
    ancestors: torch.BoolTensor,
    context_len: int,
    positions: torch.LongTensor,
    sliding_window: int | None = None,
) -> torch.BoolTensor:
    """`[T + 1, context_len + T + 1]` bool: which keys each tree slot may attend to.

    Every slot sees the whole context and its own ancestors (itself included). With a sliding window
    `W`, a query at position q only sees keys at positions > q - W (transformers' convention).
    """
    rows = ancestors.shape[0]
    ctx = torch.ones(rows, context_len, dtype=torch.bool, device=ancestors.device)
    allowed = torch.cat([ctx, ancestors], dim=1)
    if sliding_window is not None:
        key_pos = torch.cat([torch.arange(context_len, device=positions.device), positions])
        allowed &= key_pos[None, :] > positions[:, None] - sliding_window
    return allowed


__all__ = ["DraftTree", "ancestor_mask", "select_tree", "tree_attention_allowed"]
