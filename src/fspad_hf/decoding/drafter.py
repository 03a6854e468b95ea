"""`TreeDrafter`: drafts an EAGLE-2 dynamic tree with any head that implements the drafting interface.

Head context convention: entry t pairs the target feature `f_t` with the next token `x_{t+1}` and
sits at position t. After the target has processed n tokens, the head holds n entries; its output at
entry n - 1 is the predicted feature of the root (the bonus token `x_n`), whose logits give level 1.
A node at depth q has input (parent's predicted feature, own token) at position n + q - 1.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ..head.interface import DraftingHead
from ..masks import additive_mask, causal_additive_mask
from .cache import cache_length, truncate_cache
from .settings import TreeSettings
from .tree import DraftTree, select_tree


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
        """Consume pending features, then expand the tree level by level (EAGLE-2)."""
        head, s = self.head, self.settings
        if self.skip:  # the policy's plain step: nothing drafted, the pending features wait for the next draft
            return select_tree(e := input_ids.new_zeros(0), e.float(), e, e, 0, 0)  # an empty tree
        depth = max(1, min(s.depth, s.depth if max_depth is None else max_depth, self.depth_limit or s.depth))
        root_feature, root_logp = self._consume(input_ids)
        n = self.context_len
        k = min(s.top_k, root_logp.shape[-1])

        logp, idx = root_logp.topk(k)  # level 1  # [K]
        tokens, scores = [idx], [logp]
        parents = [torch.full((k,), -1, dtype=torch.long, device=idx.device)]
        depths = [torch.ones(k, dtype=torch.long, device=idx.device)]
        frontier = torch.arange(k, device=idx.device)  # created-node indices of the frontier
        frontier_feat = root_feature.expand(k, -1)  # [K, H] parents' predicted features
        created, frontiers = k, [logp]

        # Processed nodes (frontier nodes the head has run on), in head-cache order.
        proc_fused: list[torch.Tensor] = []
        proc_level: list[torch.Tensor] = []
        proc_anc = torch.zeros(0, 0, dtype=torch.bool, device=idx.device)
        # created-node index -> processed index (-1: never run); the extra last slot stays -1 so that
        # the root's "parent" index -1 maps to -1 as well.
        proc_of_created = torch.full((k + (depth - 1) * k * k + 1,), -1, dtype=torch.long, device=idx.device)
        layer_has = [0] * head.num_specialists  # processed nodes already in each specialist's cache

        for level in range(1, depth):
            node_tokens = torch.cat(tokens)[frontier]
            fused = head.fuse_draft(head.to_target_ids(node_tokens)[None], frontier_feat[None])  # [1, K, H]
            p0 = proc_anc.shape[0]
            parent_proc = proc_of_created[torch.cat(parents)[frontier]]  # [K], -1 for level-1 nodes
            proc_anc = _grow_ancestors(proc_anc, parent_proc)
            proc_of_created[frontier] = torch.arange(p0, p0 + k, device=idx.device)
            proc_fused.append(fused)
            proc_level.append(torch.full((k,), level, dtype=torch.long, device=idx.device))

            j = head.specialist_for_position(level + 1)
            start = layer_has[j]  # catch up on nodes this specialist has not seen (PosS)
            q_fused = torch.cat(proc_fused, dim=1)[:, start:]
            q_level = torch.cat(proc_level)[start:]
            allowed = torch.cat(
                [torch.ones(q_level.shape[0], n, dtype=torch.bool, device=idx.device), proc_anc[start:]], dim=1
            )
            out = head.draft_step(j, q_fused, (n + q_level - 1)[None], additive_mask(allowed, q_fused.dtype), self.cache)
            layer_has[j] = proc_anc.shape[0]
            new_pred, new_reg = out.predict[0, -k:], out.feedback[0, -k:]  # [K, H]
            child_logp, child_idx = torch.log_softmax(head.draft_logits(new_pred).float(), dim=-1).topk(k)  # [K, K]
            cum = torch.cat(scores)[frontier][:, None] + child_logp  # [K, K] cumulative path log-prob
            tokens.append(child_idx.flatten())
            scores.append(cum.flatten())
            parents.append(frontier.repeat_interleave(k))
            depths.append(torch.full((k * k,), level + 1, dtype=torch.long, device=idx.device))
            best = cum.flatten().topk(k).indices  # next frontier: K best children overall
            frontier = created + best
            frontiers.append(cum.flatten()[best])
            frontier_feat = new_reg[best // k]
            created += k * k

        self.levels, self.frontier_logp = depth, torch.stack(frontiers)
        total = s.total_tokens if self.max_nodes is None else self.max_nodes
        tree = select_tree(torch.cat(tokens), torch.cat(scores), torch.cat(parents), torch.cat(depths), total, depth)
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


def _grow_ancestors(anc: torch.BoolTensor, parent_rows: torch.LongTensor) -> torch.BoolTensor:
    """Append K processed nodes to the `[P, P]` ancestor matrix; `parent_rows` = -1 for children of the root."""
    p, k = anc.shape[0], parent_rows.shape[0]
    grown = torch.zeros(p + k, p + k, dtype=torch.bool, device=anc.device)
    grown[:p, :p] = anc
    padded = torch.cat([anc, torch.zeros(1, p, dtype=torch.bool, device=anc.device)])  # row p = "root": none
    grown[p:, :p] = padded[torch.where(parent_rows < 0, p, parent_rows)]
    grown[p:, p:] = torch.eye(k, dtype=torch.bool, device=anc.device)
    return grown


__all__ = ["TreeDrafter"]
