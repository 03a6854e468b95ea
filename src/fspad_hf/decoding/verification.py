"""Lossless acceptance of a draft tree from one target forward (METHOD.md section 5). No model needed.

Both decoding modes reduce to one rule. For every slot the target makes its own choice `y[slot]`
(greedy: argmax of the processed scores; sampling: one draw from the processed distribution). Walking
down from the root, a child is accepted iff its token equals the parent's choice; the walk ends at the
first slot whose choice matches none of its children, and that choice is the bonus token.

Why sampling stays lossless: METHOD.md's rule tries the children c1, c2, ... in turn, accepting c_i
with probability p[c_i] after zeroing and renormalising the rejected ones, and samples the bonus from
the renormalised rest. Unrolled, child c_i is accepted with probability exactly p[c_i] and the bonus
is drawn from p restricted to non-children: the same law as a single draw y ~ p followed by "descend
if y is a child, else emit y". Each slot's draw is independent and used at most once, so drawing
all of them up front is equivalent to drawing them during the walk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from .tree import DraftTree

# Processors whose output depends on the scores only, not on the prefix: safe to apply to all slots at once.
ROW_WISE_PROCESSORS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, TypicalLogitsWarper,
                       EpsilonLogitsWarper, EtaLogitsWarper)


def slot_prefixes(context_ids: torch.LongTensor, tree: DraftTree) -> list[torch.LongTensor]:
    """The token prefix each slot's next-token distribution is conditioned on (context + its path)."""
    slot_tokens = torch.cat([context_ids.new_zeros(1), tree.tokens])  # slot 0's token is already in context
    prefixes = []
    for slot in range(tree.num_nodes + 1):
        path = torch.nonzero(tree.ancestors[slot]).flatten()[1:]  # ancestors in order, root excluded
        prefixes.append(torch.cat([context_ids, slot_tokens[path]]))
    return prefixes


def process_tree_scores(
    logits_processor: LogitsProcessorList | None,
    context_ids: torch.LongTensor,
    tree: DraftTree,
    logits: torch.Tensor,
) -> torch.Tensor:
    """Apply generate()'s logits processors to every slot's logits `[T + 1, V]`, each with its own prefix.

    context_ids: `[L]` the sequence so far, ending with the root token.
    Row-wise warpers (temperature, top-k, top-p, ...) are applied to all rows at once; any other
    processor (repetition penalty, min-new-tokens, ...) is applied row by row with the row's exact
    prefix, so the processed scores are exactly what plain decoding would compute.
    """
    if not logits_processor:
        return logits
    if all(isinstance(p, ROW_WISE_PROCESSORS) for p in logits_processor):
        dummy = context_ids[None].expand(logits.shape[0], -1)
        return logits_processor(dummy, logits)
    rows = [logits_processor(prefix[None], logits[i : i + 1]) for i, prefix in enumerate(slot_prefixes(context_ids, tree))]
    return torch.cat(rows, dim=0)


def target_choices(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.LongTensor:
    """The target's own next token for every slot: argmax (greedy) or one independent draw each."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Acceptance:
    path: torch.LongTensor  # [a + 1] slots from the root (0) to the deepest accepted node
    bonus: torch.LongTensor  # [] the target's token after the last accepted slot
    prefix: bool = False  # path == [0, 1, .., a], so the caches can be cropped (False: not known, gather)

    @property
    def num_accepted(self) -> int:
        return int(self.path.shape[0]) - 1


def accept(tree: DraftTree, choices: torch.LongTensor) -> Acceptance:
    """Deepest slot whose whole path agrees with the target's choices, and the bonus token after it.

    choices: `[T + 1]` target choice per slot. Sibling tokens are distinct, so at most one child of a
    slot matches and the accepted slots form a single chain. Slots increase along a path, so the path is
    the prefix `[0, 1, .., a]` iff the deepest accepted slot is `a` (its depth): one host read gives both,
    and the path itself then needs no data-dependent shape (`nonzero`): a `topk` of `a + 1` ancestors.
    """
    matched = tree.tokens == choices[tree.parents]  # [T]: node agrees with its parent's choice
    matched = torch.cat([matched.new_ones(1), matched])  # the root is always accepted
    ok = ~(tree.ancestors & ~matched[None, :]).any(dim=-1)  # [T + 1]: every slot on the path matched
    depth = torch.cat([tree.depth.new_zeros(1), tree.depth])
    best = torch.where(ok, depth, -1).argmax(dim=0, keepdim=True)  # [1]
    slot, a = torch.cat([best, depth.index_select(0, best)]).tolist()  # the one host sync: deepest slot, its depth
    rank = torch.arange(depth.shape[0], 0, -1, device=depth.device)  # [T + 1] slot j -> T + 1 - j: topk keeps slot order
    path = torch.arange(a + 1, device=depth.device) if slot == a else (tree.ancestors[slot] * rank).topk(a + 1).indices
    return Acceptance(path=path, bonus=choices[slot], prefix=slot == a)  # ancestors precede descendants


__all__ = ["ROW_WISE_PROCESSORS", "process_tree_scores", "target_choices", "accept", "Acceptance", "slot_prefixes"]
