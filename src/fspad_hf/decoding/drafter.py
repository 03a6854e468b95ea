"""`TreeDrafter`: drafts an EAGLE-2 dynamic tree with any head that implements the drafting interface.

Head context convention: entry t pairs the target feature `f_t` with the next token `x_{t+1}` and
sits at position t. After the target has processed n tokens, the head holds n entries; its output at
entry n - 1 is the predicted feature of the root (the bonus token `x_n`), whose logits give level 1.
A node at depth q has input (parent's predicted feature, own token) at position n + q - 1.

Static shapes (gpt-fast style): a round's tree has a fixed layout given (depth, K). Created nodes are
level-major: K children of the root, then K * K per level (row = the frontier parent, column = its
child rank). Level q expands the K frontier nodes of depth q ("processed" nodes, K per level, in head-cache
order). `DraftBuffers` holds every per-round tensor at its maximal size once per call and each level
writes its own slice; what does not depend on the data (depths, level-1 and level-2 parents, positions,
which specialist drafts a level and which nodes it must catch up on) is computed once.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ..head.interface import DraftingHead
from ..masks import causal_additive_mask
from .cache import cache_length, truncate_cache
from .settings import TreeSettings
from .tree import DraftTree, select_tree


def level_plans(head: DraftingHead, depth: int, k: int) -> list[tuple[int, int, int, int]]:
    """Per draft level 1 .. depth - 1: (specialist, start, p0, c0), static for a tree shape.

    specialist: the head layer drafting position level + 1; start: the first processed node it has not
    encoded yet (PosS catch-up; == p0 when one specialist drafts every level); p0 = (level - 1) * K:
    processed nodes before the level; c0 = K + (level - 1) * K * K: created nodes before its children.
    """
    layer_has, plans = [0] * head.num_specialists, []  # processed nodes already in each specialist's cache
    for level in range(1, depth):
        j, p0 = head.specialist_for_position(level + 1), (level - 1) * k
        plans.append((j, layer_has[j], p0, k + (level - 1) * k * k))
        layer_has[j] = p0 + k
    return plans


class DraftBuffers:
    """Preallocated storage of one draft round, for trees up to `depth` deep with `k` children per node.

    Created nodes `[N]`, N = K + (depth - 1) * K * K: tokens (draft ids), scores (cumulative log-probs),
    parents (created index, -1 = root) and depth; the first two levels' parents and every depth are static.
    Per level: frontier_logp / best `[depth, K]` (the frontier's scores and flat child indices).
    Processed nodes `[P]`, P = (depth - 1) * K: offsets (depth - 1), fused inputs (only with a PosS
    catch-up) and the head's additive mask `[P, capacity + P]`: context columns are 0 (allowed); `tree`, the
    last P columns, holds each processed node's ancestors. Invariant: row r's columns from its own level on
    (`tree[r, (r // K) * K:]`) are static (0 on the diagonal, the dtype's min elsewhere); its earlier
    columns are rewritten every round before they are read. A round's mask is the view of the last
    `n + end` columns (`n` context entries); a context beyond `capacity` re-allocates it (doubling).
    """

    def __init__(self, head: DraftingHead, depth: int, k: int, device: torch.device):
        self.k, self.plans = k, level_plans(head, depth, k)
        n, self.p = k + (depth - 1) * k * k, (depth - 1) * k  # created, processed nodes
        self.tokens = torch.zeros(n, dtype=torch.long, device=device)
        self.scores = torch.zeros(n, device=device)
        self.parents = torch.tensor(([-1] * k + [i for i in range(k) for _ in range(k)] + [0] * n)[:n], device=device)
        self.depth = torch.tensor([1] * k + [d for d in range(2, depth + 1) for _ in range(k * k)], device=device)
        self.frontier_logp = torch.zeros(depth, k, device=device)
        self.best = torch.zeros(depth, k, dtype=torch.long, device=device)
        self.offsets = torch.arange(self.p, device=device) // k  # [P] depth - 1 of each processed node
        self.catch_up = any(start != p0 for _, start, p0, _ in self.plans)
        self.fused, self.mask, self.tree, self.capacity = None, None, None, 0

    def prepare(self, n: int, fused: torch.Tensor) -> None:
        """Make room for `n` context entries (and the fused inputs, at the first round)."""
        if self.catch_up and self.fused is None:
            self.fused = fused.new_zeros(1, self.p, fused.shape[-1])  # [1, P, H]
        if self.mask is None or n > self.capacity:
            self.capacity = max(2 * n, 64)  # headroom: the context grows by a few entries per round
            self.mask = torch.zeros(self.p, self.capacity + self.p, dtype=fused.dtype, device=fused.device)
            self.tree = self.mask[:, self.capacity :].fill_(torch.finfo(fused.dtype).min)  # [P, P] view
            self.tree.diagonal().fill_(0.0)


class TreeDrafter:
    """Produces a `DraftTree` per round from a draft head (drafting interface only) and its own KV cache.

    The generation loop feeds it the target features of every processed token (`observe`) and asks
    for one tree per round (`draft`).
    """

    def __init__(self, head: DraftingHead, settings: TreeSettings):
        self.head = head
        self.settings = settings
        self.cache = DynamicCache()
        self.pending: torch.Tensor | None = None  # [1, c, H] target features not yet consumed
        self.context_len = 0  # entries in the head cache (== tokens processed by the target)
        # Set by the adaptive policy (decoding/policy.py); `levels`, `frontier_logp` ([levels, K]): the last draft.
        self.skip, self.depth_limit, self.max_nodes, self.levels, self.frontier_logp = False, None, None, 0, None
        self.buffers: DraftBuffers | None = None  # allocated at the first draft, reused by every round

    def feedback(self, tree: DraftTree, path: torch.LongTensor) -> None:
        pass  # the static tree learns nothing from a verified round

    def observe(self, features: torch.Tensor) -> None:
        """Queue the target features `[1, c, H]` of newly processed tokens (the prompt, or root + accepted nodes).

        They are consumed at the next `draft`, whose `input_ids` end with the bonus token, so every
        queued feature has its next token.
        """
        self.pending = features if self.pending is None else torch.cat([self.pending, features], dim=1)

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_depth: int | None = None) -> DraftTree:
        """Consume pending features, then expand the tree level by level (EAGLE-2), in place in `DraftBuffers`.

        Each level writes its slice of the round's buffers (no list grows, nothing is re-concatenated, no
        host read): the frontier's tokens, scores and features are gathered from the level just drafted.
        """
        head, s = self.head, self.settings
        if self.skip:  # the policy's plain step: nothing drafted, the pending features wait for the next draft
            return select_tree(e := input_ids.new_zeros(0), e.float(), e, e, 0, 0)  # an empty tree
        depth = max(1, min(s.depth, s.depth if max_depth is None else max_depth, self.depth_limit or s.depth))
        root_feature, root_logp = self._consume(input_ids)
        n, k = self.context_len, min(s.top_k, root_logp.shape[-1])
        if self.buffers is None or self.buffers.k != k:
            self.buffers = DraftBuffers(head, s.depth, k, root_logp.device)
        b = self.buffers
        torch.topk(root_logp, k, out=(b.scores[:k], b.tokens[:k]))  # level 1
        b.frontier_logp[0].copy_(b.scores[:k])
        front_tokens, front_score, front_feat = b.tokens[:k], b.scores[:k], root_feature.expand(k, -1)  # [K], [K], [K, H]
        positions = b.offsets + n  # [P] node at depth q sits at n + q - 1

        for level, (j, start, p0, c0) in enumerate(b.plans[: depth - 1], start=1):
            fused = head.fuse_draft(head.to_target_ids(front_tokens)[None], front_feat[None])  # [1, K, H]
            end, kk = p0 + k, slice(c0, c0 + k * k)  # processed nodes after this level; this level's children
            if level == 1:
                b.prepare(n, fused)
            else:  # the new rows' ancestors are their parents' (one level up); their own block is static
                b.tree[p0:end, :p0].copy_(b.tree[:, :p0].index_select(0, parent + (p0 - k)))
            if b.fused is not None:  # PosS catch-up: a specialist re-reads the nodes it has not encoded
                b.fused[:, p0:end] = fused
            q_fused = fused if b.fused is None else b.fused[:, start:end]  # [1, Q, H]
            mask = b.mask[None, None, start:end, b.capacity - n : b.capacity + end]  # [1, 1, Q, n + end]
            out = head.draft_step(j, q_fused, positions[None, start:end], mask, self.cache)
            new_pred, new_reg = out.predict[0, -k:], out.feedback[0, -k:]  # [K, H]
            child_scores, child_tokens = b.scores[kk].view(k, k), b.tokens[kk].view(k, k)  # [K, K] row = parent
            torch.topk(torch.log_softmax(head.draft_logits(new_pred).float(), dim=-1), k, out=(child_scores, child_tokens))
            child_scores.add_(front_score[:, None])  # cumulative path log-prob
            front_score, best = b.frontier_logp[level], b.best[level]
            torch.topk(child_scores.view(-1), k, out=(front_score, best))  # next frontier: the K best children overall
            parent = best // k  # [K] frontier index (this level) of each new frontier node's parent
            front_tokens, front_feat = child_tokens.view(-1).index_select(0, best), new_reg.index_select(0, parent)
            if level + 1 < depth:  # the next level's children hang under these created nodes
                b.parents[c0 + k * k : c0 + 2 * k * k].view(k, k).copy_(best[:, None] + c0)

        self.levels, self.frontier_logp = depth, b.frontier_logp[:depth]  # a view: valid until the next draft
        total, m = s.total_tokens if self.max_nodes is None else self.max_nodes, k + (depth - 1) * k * k
        tree = select_tree(b.tokens[:m], b.scores[:m], b.parents[:m], b.depth[:m], total, depth)  # gathers: no aliasing
        tree.tokens = head.to_target_ids(tree.tokens)
        truncate_cache(self.cache, n)  # drop draft entries; accepted ones are re-encoded from true features
        return tree

    # -- internals ------------------------------------------------------------------------
    def _consume(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the head over pending (feature, next token) pairs; return the root's feature and log-probs.

        Every specialist encodes the same context entries, so each has its keys when it drafts (PosS).
        """
        if self.pending is None:
            raise RuntimeError("TreeDrafter.draft called before any target features were observed.")
        head, c = self.head, self.pending.shape[1]
        n0 = cache_length(self.cache)
        next_tokens = input_ids[:, n0 + 1 : n0 + 1 + c]  # x_{t+1} for each pending f_t  # [1, c]
        if next_tokens.shape[1] != c:
            raise RuntimeError(f"head context out of sync: {c} features but {next_tokens.shape[1]} next tokens")
        fused = head.fuse_context(next_tokens, self.pending)  # [1, c, H]
        positions = torch.arange(n0, n0 + c, device=fused.device)[None]
        mask = causal_additive_mask(c, n0, fused.dtype, fused.device) if c > 1 else None
        first = head.specialist_for_position(1)
        for j in range(head.num_specialists):
            step = head.draft_step(j, fused, positions, mask, self.cache)
            if j == first:
                out = step
        self.pending = None
        self.context_len = n0 + c
        root_logits = head.draft_logits(out.predict[0, -1:])  # [1, V_draft]
        return out.feedback[0, -1:], torch.log_softmax(root_logits[0].float(), dim=-1)


__all__ = ["TreeDrafter", "DraftBuffers", "level_plans"]
