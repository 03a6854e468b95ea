"""Pure tree / mask / acceptance functions on hand-built trees (no model)."""

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

from fspad_hf.decoding.tree import DraftTree, ancestor_mask, select_tree, tree_attention_allowed
from fspad_hf.masks import additive_mask
from fspad_hf.decoding.verification import accept, process_tree_scores, slot_prefixes, target_choices

# root(0) -> 1 (a) -> 3 (c) -> 5 (e)
#         -> 2 (b) -> 4 (d)
PARENTS = torch.tensor([0, 0, 1, 2, 3])
DEPTH = torch.tensor([1, 1, 2, 2, 3])
TOKENS = torch.tensor([10, 11, 12, 13, 14])


def hand_tree():
    return DraftTree(tokens=TOKENS, parents=PARENTS, depth=DEPTH, ancestors=ancestor_mask(PARENTS, 3))


def test_ancestor_mask_matches_definition():
    mask = ancestor_mask(PARENTS, 3)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[0, 0] = True
    parent_of = [0] + PARENTS.tolist()
    for j in range(1, 6):  # mask[j] = onehot(j) | mask[parent(j)]
        expected[j] = expected[parent_of[j]].clone()
        expected[j, j] = True
    assert torch.equal(mask, expected)


def test_select_tree_keeps_best_and_is_closed_under_ancestors():
    # created nodes: level 1: A(-0.1) B(-1.0); level 2: A1(-0.3) A2(-2.0) B1(-1.2) B2(-5.0)
    tokens = torch.tensor([1, 2, 3, 4, 5, 6])
    scores = torch.tensor([-0.1, -1.0, -0.3, -2.0, -1.2, -5.0])
    parents = torch.tensor([-1, -1, 0, 0, 1, 1])
    depth = torch.tensor([1, 1, 2, 2, 2, 2])
    tree = select_tree(tokens, scores, parents, depth, total_tokens=4)
    assert tree.tokens.tolist() == [1, 2, 3, 5]  # creation order: ancestors first
    assert tree.parents.tolist() == [0, 0, 1, 2]
    assert tree.depth.tolist() == [1, 1, 2, 2]
    # closure: every kept node's parent slot precedes it
    assert all(p < j + 1 for j, p in enumerate(tree.parents.tolist()))


def test_select_tree_tie_prefers_parent():
    # a child with log-prob 0 ties with its parent: the parent must be kept first
    tokens = torch.tensor([1, 2, 3])
    scores = torch.tensor([-0.5, -0.5, -0.4])
    parents = torch.tensor([-1, 0, -1])
    depth = torch.tensor([1, 2, 1])
    tree = select_tree(tokens, scores, parents, depth, total_tokens=2)
    assert sorted(tree.tokens.tolist()) == [1, 3]


def test_tree_attention_mask_and_sliding_window():
    tree = hand_tree()
    ctx = 4
    positions = ctx + torch.cat([torch.zeros(1, dtype=torch.long), DEPTH])
    allowed = tree_attention_allowed(tree.ancestors, ctx, positions)
    assert allowed.shape == (6, ctx + 6)
    assert allowed[:, :ctx].all()
    assert allowed[5, ctx:].tolist() == [True, True, False, True, False, True]
    windowed = tree_attention_allowed(tree.ancestors, ctx, positions, sliding_window=3)
    # slot 5 is at position 7: keys at positions <= 4 are out of a window of 3
    assert windowed[5, :ctx].tolist() == [False, False, False, False]
    assert windowed[5, ctx:].tolist() == [False, True, False, True, False, True]  # root (position 4) is out
    add = additive_mask(allowed, torch.float32)
    assert add.shape == (1, 1, 6, ctx + 6)
    assert (add[0, 0][allowed] == 0).all() and (add[0, 0][~allowed] == torch.finfo(torch.float32).min).all()


def test_accept_longest_matching_path_and_bonus():
    tree = hand_tree()
    # choices per slot: root->11 (b), b->13 (d), d->99 (bonus); other slots irrelevant
    choices = torch.tensor([11, 50, 13, 51, 99, 52])
    acc = accept(tree, choices)
    assert acc.path.tolist() == [0, 2, 4] and acc.bonus.item() == 99 and acc.num_accepted == 2
    choices = torch.tensor([10, 12, 0, 14, 0, 77])  # full a-c-e path, bonus 77
    acc = accept(tree, choices)
    assert acc.path.tolist() == [0, 1, 3, 5] and acc.bonus.item() == 77
    choices = torch.tensor([42, 12, 13, 14, 0, 0])  # root choice matches no child: only bonus
    acc = accept(tree, choices)
    assert acc.path.tolist() == [0] and acc.bonus.item() == 42


def test_prefix_dependent_processor_is_applied_per_slot():
    tree = hand_tree()
    context = torch.tensor([3, 4, 5])
    prefixes = slot_prefixes(context, tree)
    assert prefixes[5].tolist() == [3, 4, 5, 10, 12, 14]
    assert prefixes[4].tolist() == [3, 4, 5, 11, 13]
    logits = torch.randn(6, 20)
    proc = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0)])
    out = process_tree_scores(proc, context, tree, logits.clone())
    for slot in range(6):
        ref = proc(prefixes[slot][None], logits[slot : slot + 1].clone())
        assert torch.equal(out[slot : slot + 1], ref)
    warp = LogitsProcessorList([TemperatureLogitsWarper(0.5)])
    assert torch.allclose(process_tree_scores(warp, context, tree, logits.clone()), logits / 0.5)


def test_target_choices_greedy_and_sampled():
    scores = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, -1.0]])
    assert target_choices(scores, do_sample=False).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    peaked = torch.tensor([[-1e9, 0.0, -1e9]])
    assert target_choices(peaked, do_sample=True, generator=g).item() == 1
