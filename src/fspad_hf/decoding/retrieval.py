"""Retrieval drafts (prompt lookup / suffix decoding) merged into the head's draft tree. No model needed.

Three pieces:
- `SuffixIndex`: an incremental n-gram index over the token ids so far (prompt + everything generated).
  Every n-gram of length `min_n..max_n` maps to the positions where it ends; each round only the new
  tokens are indexed (never a rescan of the context). `lookup` returns distinct continuations of the
  current suffix: longest matching n first, then most recent occurrence.
- `merge_retrieved`: a pure function merging retrieved sequences (root-anchored paths) into a
  `DraftTree` as a trie: a prefix the tree already holds reuses its nodes, siblings stay distinct, new
  nodes are appended after the existing ones (ancestors still precede descendants) and each node
  records its source (0 = head, 1 = retrieval; a node both proposed counts as head).
- `RetrievalDrafter`: the drafter of the generation loop when retrieval is on. It wraps the head's
  drafter (or none: head-free mode, where a round without a match verifies the root alone, a plain step).

Why verification needs no change: retrieved tokens are a deterministic function of the text so far
(no draw from any draft distribution). `verification.accept` makes the target's own choice at every
slot (greedy argmax, or one independent draw from the processed distribution) and descends into the
child equal to that choice; the emitted token at each step is therefore the target's choice whatever
the child set is, as long as siblings are distinct (the trie merge guarantees it). Any deterministic
set of children - head top-k, retrieved, or both - leaves greedy output and the sampling law unchanged.
"""

from __future__ import annotations

import array
import itertools
from dataclasses import dataclass

import torch

from .tree import DraftTree

HEAD_SOURCE, RETRIEVAL_SOURCE = 0, 1


@dataclass
class MergedTree(DraftTree):
    """A `DraftTree` whose nodes record where they came from.

    source: `[T]` per node: 0 = the draft head, 1 = retrieval (a node both proposed counts as head).
    match: `[T]` per retrieval node, the match length n of its path (0 for head nodes, or unknown).
    retrieved: `[T]` bool, the node lies on a retrieved path (whether the head proposed it too): the tree
        retrieval alone would have offered (the adaptive policy's shadow, decoding/round_costs.py).
    """

    source: torch.LongTensor | None = None
    match: torch.LongTensor | None = None
    retrieved: torch.BoolTensor | None = None


class SuffixIndex:
    """n-grams (`min_n <= n <= max_n`) of a growing token sequence -> the positions where they end.

    `extend` indexes only the new tokens: each adds one entry per n (at most `max_n - min_n + 1`).
    End positions are appended in increasing order, so the most recent occurrence is the last entry.
    """

    def __init__(self, min_n: int = 2, max_n: int = 6):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"SuffixIndex needs 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}.")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, new_tokens) -> None:
        """Append token ids (any iterable of ints) and index the n-grams that end at each of them."""
        tokens, ends = self.tokens, self.ends
        for tok in new_tokens:
            tokens.append(int(tok))
            end = len(tokens) - 1
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                ends.setdefault(tuple(tokens[end - n + 1 :]), []).append(end)

    def lookup(self, max_branches: int, length: int, max_scan: int | None = None) -> list[list[int]]:
        """Up to `max_branches` distinct continuations (each up to `length` tokens) of the current suffix.

        Order: longest matching n-gram first, then most recent occurrence. A continuation equal to or a
        prefix of one already taken is dropped (it adds nothing to the trie); one that extends a taken
        continuation replaces it in place. At most `max_scan` occurrences are examined (default
        `8 * max_branches`), so the cost stays bounded on very repetitive text.
        """
        return [cont for _, cont in self.lookup_matches(max_branches, length, max_scan)]

    def lookup_matches(self, max_branches: int, length: int, max_scan: int | None = None) -> list[tuple[int, list[int]]]:
        """`lookup` with each continuation's match length: (n of the longest suffix n-gram it follows, tokens).

        The match length is what the adaptive policy prices retrieval nodes by (a continuation of a 6-gram
        is accepted far more often than one of a 2-gram; decoding/policy.py `Calibration`).
        """
        tokens, size = self.tokens, len(self.tokens)
        if max_branches <= 0 or length <= 0 or size < self.min_n:
            return []
        budget = 8 * max_branches if max_scan is None else max_scan
        taken: list[tuple[int, list[int]]] = []
        for n in range(min(self.max_n, size), self.min_n - 1, -1):
            for end in reversed(self.ends.get(tuple(tokens[size - n :]), ())):
                if end == size - 1:
                    continue  # the suffix itself: nothing follows it yet
                if budget <= 0:
                    return taken
                budget -= 1
                _add_distinct(taken, n, tokens[end + 1 : end + 1 + length])
                if len(taken) == max_branches:
                    return taken
        return taken


def _add_distinct(taken: list[tuple[int, list[int]]], n: int, cont: list[int]) -> None:
    for i, (old_n, old) in enumerate(taken):
        common = min(len(old), len(cont))
        if old[:common] == cont[:common]:
            if len(cont) > len(old):
                taken[i] = (old_n, cont)  # the longer one holds the shorter: same rank (n >= this n), more tokens
            return
    taken.append((n, cont))


def _trie(paths: list[list[int]], matches: list[int]):
    """Python trie over the retrieved paths (loops over retrieved tokens only).

    Returns per trie node, in creation order (parents first): token, parent (-1 = root), depth, its root
    path (tokens from depth 1 to its own) and its match length (the largest of the paths through it).
    """
    tokens, parents, depths, node_paths, node_match = [], [], [], [], []
    children: dict[tuple[int, int], int] = {}
    for path, n in zip(paths, matches):
        cur = -1
        for d, tok in enumerate(path, start=1):
            key = (cur, tok)
            if key not in children:
                children[key] = len(tokens)
                tokens.append(tok)
                parents.append(cur)
                depths.append(d)
                node_paths.append(path[:d])
                node_match.append(n)
            cur = children[key]
            node_match[cur] = max(node_match[cur], n)
    return tokens, parents, depths, node_paths, node_match


def _long_table(rows: list[list[int]], device) -> torch.LongTensor:
    """`[R, C]` long tensor of equal-length int rows (R >= 1), in one host -> device copy. Through `array`, since
    `torch.tensor` on nested lists costs ~0.1 us per element."""
    flat = array.array("q", itertools.chain.from_iterable(rows))
    return torch.frombuffer(flat, dtype=torch.long).view(len(rows), -1).to(device)


def head_paths(tree: DraftTree, width: int) -> torch.LongTensor:
    """`[T, width]` root paths of the tree's nodes: entry q = token at depth q + 1 on the path, -1 past the node."""
    anc = tree.ancestors[1:, 1:]  # [T, T] node j's ancestors (itself included), root dropped
    levels = torch.arange(1, width + 1, device=tree.depth.device)
    at_level = anc[:, :, None] & (tree.depth[None, :, None] == levels[None, None, :])  # [T, T, W]
    picked = (at_level.long() * tree.tokens[None, :, None]).sum(dim=1)  # [T, W]
    return torch.where(at_level.any(dim=1), picked, -1)


def merge_retrieved(
    tree: DraftTree | None,
    paths: list[list[int]],
    max_depth: int | None = None,
    device: torch.device | str | None = None,
    tree_depth: int | None = None,
    matches: list[int] | None = None,
) -> MergedTree:
    """One tree from `tree` (the head's, or None) plus the root-anchored `paths` (token ids), merged as a trie.

    Paths are cut to `max_depth` tokens. A retrieved node whose root path the tree already holds is that
    tree node; the others are appended in trie order (parents first), so ancestors precede descendants
    and siblings stay distinct (the head's siblings are distinct, and a retrieved child is only added
    where no sibling carries its token). The tree's ancestor mask is extended, not rebuilt: one host sync
    (how many nodes are new). `tree_depth` (an upper bound of `tree`'s depth) is no longer needed; kept for callers.
    `matches`: per path, its match length (`SuffixIndex.lookup_matches`); recorded per new node as `match`.
    """
    matches = [0] * len(paths) if matches is None else matches
    if max_depth is not None:
        paths = [p[:max_depth] for p in paths]
    matches = [n for p, n in zip(paths, matches) if p]
    paths = [p for p in paths if p]
    if device is None:
        device = tree.tokens.device if tree is not None else "cpu"
    if tree is None:
        tree = DraftTree(
            tokens=torch.zeros(0, dtype=torch.long, device=device),
            parents=torch.zeros(0, dtype=torch.long, device=device),
            depth=torch.zeros(0, dtype=torch.long, device=device),
            ancestors=torch.ones(1, 1, dtype=torch.bool, device=device),
        )
    t = tree.num_nodes
    head_source = getattr(tree, "source", None)
    if head_source is None:
        head_source = torch.full((t,), HEAD_SOURCE, dtype=torch.long, device=device)
    head_match = getattr(tree, "match", None)
    if head_match is None:
        head_match = torch.zeros(t, dtype=torch.long, device=device)
    head_retrieved = getattr(tree, "retrieved", None)
    if head_retrieved is None:
        head_retrieved = torch.zeros(t, dtype=torch.bool, device=device)
    if not paths:
        return MergedTree(tree.tokens, tree.parents, tree.depth, tree.ancestors, tree.scores, head_source, head_match,
                          head_retrieved)

    r_tokens, r_parents, r_depths, r_paths, r_match = _trie(paths, matches)
    width = max(r_depths)
    chains = []  # per trie node: the trie nodes of its root path, itself included (-1, the root, pads on the left)
    for r, parent in enumerate(r_parents):
        chains.append((chains[parent] if parent >= 0 else [-1] * (width + 1))[1:] + [r])  # W + 1 entries
    table = _long_table([[tok, par, dep, n] + p + [-1] * (width - len(p)) + chain
                         for tok, par, dep, n, p, chain in zip(r_tokens, r_parents, r_depths, r_match, r_paths, chains)],
                        device)
    r_tok, r_par, r_dep, r_n = table[:, 0], table[:, 1], table[:, 2], table[:, 3]  # [R] each
    padded, chain_of = table[:, 4 : 4 + width], table[:, 4 + width :]  # [R, W] root paths, [R, W + 1] trie chains

    if t:
        same = (head_paths(tree, width)[None, :, :] == padded[:, None, :]).all(dim=-1)  # [R, T]
        same &= tree.depth[None, :] == r_dep[:, None]  # deeper head nodes agree on the first W tokens only
        found = same.any(dim=-1)  # [R]; at most one node per root path (siblings are distinct)
        head_slot = same.long().argmax(dim=-1) + 1
    else:
        found = torch.zeros(len(r_tokens), dtype=torch.bool, device=device)
        head_slot = torch.zeros(len(r_tokens), dtype=torch.long, device=device)
    # a found node's parent is found too (the head tree holds its whole path), so new nodes keep trie order
    new = torch.nonzero(~found).flatten()  # [N] trie nodes the tree lacks: the merge's one host sync
    slot = torch.where(found, head_slot, t + torch.cumsum(~found, dim=0))  # [R] slot of every trie node
    slot_ext = torch.cat([slot, slot.new_zeros(1)])  # trie index -1 (the root) -> slot 0
    new_tok = r_tok.index_select(0, new)
    hit = torch.zeros(t + 1, dtype=torch.bool, device=device)  # slot -> a retrieved path passes through it
    hit.scatter_(0, torch.where(found, head_slot, 0), True)  # (slot 0, the root, collects the new nodes)

    # Ancestors: the tree's block is kept as is; a new node's row holds the slots of its trie chain (padding
    # -1 is the root, slot 0, an ancestor of every node anyway).
    m = t + 1 + new.shape[0]
    ancestors = torch.zeros(m, m, dtype=torch.bool, device=device)
    ancestors[: t + 1, : t + 1] = tree.ancestors
    ancestors[t + 1 :].scatter_(1, slot_ext[chain_of.index_select(0, new)], True)
    scores = None
    if tree.scores is not None:  # retrieval nodes carry no draft log-probability
        scores = torch.cat([tree.scores, tree.scores.new_full((new.shape[0],), float("nan"))])
    return MergedTree(
        tokens=torch.cat([tree.tokens, new_tok]),
        parents=torch.cat([tree.parents, slot_ext[r_par.index_select(0, new)]]),
        depth=torch.cat([tree.depth, r_dep.index_select(0, new)]),
        ancestors=ancestors,
        scores=scores,
        source=torch.cat([head_source, torch.full_like(new_tok, RETRIEVAL_SOURCE)]),
        match=torch.cat([head_match, r_n.index_select(0, new)]),
        retrieved=torch.cat([head_retrieved | hit[1:], torch.ones_like(new_tok, dtype=torch.bool)]),
    )


# standalone: omit (retrieval drafting needs the fspad-hf package; the shared file stays lean)
class RetrievalDrafter:
    """Drafter of the generation loop with retrieval on: the inner drafter's tree (if any) + retrieved paths.

    `inner`: a drafter (`observe`, `draft`, `feedback`; the head's
    `TreeDrafter`), or None for head-free drafting. `inner_depth`: an upper bound of the inner tree's
    depth (its `settings.depth`), used to size the ancestor walk without a host sync.
    """

    def __init__(self, branches: int, length: int, inner=None, inner_depth: int | None = None,
                 min_n: int = 2, max_n: int = 6):
        if branches < 1 or length < 1:
            raise ValueError(f"retrieval needs branches >= 1 and length >= 1, got {branches} and {length}.")
        self.branches, self.length = branches, length
        self.inner, self.inner_depth = inner, inner_depth
        self.index = SuffixIndex(min_n, max_n)

    def feedback(self, tree: DraftTree, path: torch.LongTensor) -> None:
        if self.inner is not None:
            self.inner.feedback(tree, path)

    def observe(self, features: torch.Tensor) -> None:
        if self.inner is not None:
            self.inner.observe(features)

    def draft(self, input_ids: torch.LongTensor, max_depth: int | None = None) -> MergedTree:
        tree = self.inner.draft(input_ids, max_depth=max_depth) if self.inner is not None else None
        self.index.extend(input_ids[0, len(self.index) :].tolist())  # the one host sync: the new tokens
        length = self.length if max_depth is None else max(1, min(self.length, max_depth))
        found = self.index.lookup_matches(self.branches, length)
        depth_bound = None
        if tree is not None and self.inner_depth is not None:
            depth_bound = self.inner_depth if max_depth is None else max(1, min(self.inner_depth, max_depth))
        return merge_retrieved(tree, [c for _, c in found], length, input_ids.device, depth_bound, [n for n, _ in found])


__all__ = ["SuffixIndex", "MergedTree", "merge_retrieved", "head_paths", "RetrievalDrafter",
           "HEAD_SOURCE", "RETRIEVAL_SOURCE"]
