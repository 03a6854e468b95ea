"""`TreeDrafter.draft` (static-shape level loop) drafts exactly the trees of the original level loop.

`ReferenceDrafter` below is the drafter as it was before the static-shape rewrite (issue 12 item 6), kept
verbatim: per level it re-concatenates growing lists of tokens, scores, parents, fused inputs and levels,
and rebuilds the ancestor matrix. `Twin` drives both with the same features in a real decoding loop and
asserts identical trees (tokens, parents, depth, scores, ancestors) and policy reports (levels, frontier
log-probs) every round, over tree shapes (depth 1..5, top-k 1..4), the adaptive policy's knobs (`skip`,
`depth_limit`, `max_nodes`, set at random or by the policy itself), retrieval merge, PosS specialists (the
catch-up path), a reduced draft vocabulary, EAGLE-3 and bfloat16. Output stays equal to plain generate().
"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from transformers.cache_utils import DynamicCache

from fspad_hf import FSPADDraftModel
from fspad_hf.decoding.cache import cache_length, truncate_cache
from fspad_hf.decoding.drafter import TreeDrafter
from fspad_hf.decoding.generation import run_tree_decoding, target_forward
from fspad_hf.decoding.policy import AdaptiveDrafter
from fspad_hf.decoding.retrieval import RetrievalDrafter, merge_retrieved
from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.decoding.tree import DraftTree, select_tree
from fspad_hf.masks import additive_mask, causal_additive_mask
from tests.conftest import make_target
from tests.test_overhead import counting_syncs


# ---------------------------------------------------------------------------- the reference (the old loop)
class ReferenceDrafter:
    """The original `TreeDrafter` (growing lists re-concatenated every level), verbatim."""

    def __init__(self, head, settings: TreeSettings):
        self.head = head
        self.settings = settings
        self.cache = DynamicCache()
        self.pending: torch.Tensor | None = None
        self.context_len = 0
        self.skip, self.depth_limit, self.max_nodes, self.levels, self.frontier_logp = False, None, None, 0, None

    def observe(self, features: torch.Tensor) -> None:
        self.pending = features if self.pending is None else torch.cat([self.pending, features], dim=1)

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_depth: int | None = None) -> DraftTree:
        head, s = self.head, self.settings
        if self.skip:
            return select_tree(e := input_ids.new_zeros(0), e.float(), e, e, 0, 0)
        depth = max(1, min(s.depth, s.depth if max_depth is None else max_depth, self.depth_limit or s.depth))
        root_feature, root_logp = self._consume(input_ids)
        n = self.context_len
        k = min(s.top_k, root_logp.shape[-1])

        logp, idx = root_logp.topk(k)
        tokens, scores = [idx], [logp]
        parents = [torch.full((k,), -1, dtype=torch.long, device=idx.device)]
        depths = [torch.ones(k, dtype=torch.long, device=idx.device)]
        frontier = torch.arange(k, device=idx.device)
        frontier_feat = root_feature.expand(k, -1)
        created, frontiers = k, [logp]

        proc_fused: list[torch.Tensor] = []
        proc_level: list[torch.Tensor] = []
        proc_anc = torch.zeros(0, 0, dtype=torch.bool, device=idx.device)
        proc_of_created = torch.full((k + (depth - 1) * k * k + 1,), -1, dtype=torch.long, device=idx.device)
        layer_has = [0] * head.num_specialists

        for level in range(1, depth):
            node_tokens = torch.cat(tokens)[frontier]
            fused = head.fuse_draft(head.to_target_ids(node_tokens)[None], frontier_feat[None])
            p0 = proc_anc.shape[0]
            parent_proc = proc_of_created[torch.cat(parents)[frontier]]
            proc_anc = _grow_ancestors(proc_anc, parent_proc)
            proc_of_created[frontier] = torch.arange(p0, p0 + k, device=idx.device)
            proc_fused.append(fused)
            proc_level.append(torch.full((k,), level, dtype=torch.long, device=idx.device))

            j = head.specialist_for_position(level + 1)
            start = layer_has[j]
            q_fused = torch.cat(proc_fused, dim=1)[:, start:]
            q_level = torch.cat(proc_level)[start:]
            allowed = torch.cat(
                [torch.ones(q_level.shape[0], n, dtype=torch.bool, device=idx.device), proc_anc[start:]], dim=1
            )
            out = head.draft_step(j, q_fused, (n + q_level - 1)[None], additive_mask(allowed, q_fused.dtype), self.cache)
            layer_has[j] = proc_anc.shape[0]
            new_pred, new_reg = out.predict[0, -k:], out.feedback[0, -k:]
            child_logp, child_idx = torch.log_softmax(head.draft_logits(new_pred).float(), dim=-1).topk(k)
            cum = torch.cat(scores)[frontier][:, None] + child_logp
            tokens.append(child_idx.flatten())
            scores.append(cum.flatten())
            parents.append(frontier.repeat_interleave(k))
            depths.append(torch.full((k * k,), level + 1, dtype=torch.long, device=idx.device))
            best = cum.flatten().topk(k).indices
            frontier = created + best
            frontiers.append(cum.flatten()[best])
            frontier_feat = new_reg[best // k]
            created += k * k

        self.levels, self.frontier_logp = depth, torch.stack(frontiers)
        total = s.total_tokens if self.max_nodes is None else self.max_nodes
        tree = select_tree(torch.cat(tokens), torch.cat(scores), torch.cat(parents), torch.cat(depths), total, depth)
        tree.tokens = head.to_target_ids(tree.tokens)
        truncate_cache(self.cache, n)
        return tree

    def _consume(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        head, c = self.head, self.pending.shape[1]
        n0 = cache_length(self.cache)
        next_tokens = input_ids[:, n0 + 1 : n0 + 1 + c]
        fused = head.fuse_context(next_tokens, self.pending)
        positions = torch.arange(n0, n0 + c, device=fused.device)[None]
        mask = causal_additive_mask(c, n0, fused.dtype, fused.device) if c > 1 else None
        first = head.specialist_for_position(1)
        for j in range(head.num_specialists):
            step = head.draft_step(j, fused, positions, mask, self.cache)
            if j == first:
                out = step
        self.pending = None
        self.context_len = n0 + c
        root_logits = head.draft_logits(out.predict[0, -1:])
        return out.feedback[0, -1:], torch.log_softmax(root_logits[0].float(), dim=-1)


def _grow_ancestors(anc: torch.BoolTensor, parent_rows: torch.LongTensor) -> torch.BoolTensor:
    p, k = anc.shape[0], parent_rows.shape[0]
    grown = torch.zeros(p + k, p + k, dtype=torch.bool, device=anc.device)
    grown[:p, :p] = anc
    padded = torch.cat([anc, torch.zeros(1, p, dtype=torch.bool, device=anc.device)])
    grown[p:, :p] = padded[torch.where(parent_rows < 0, p, parent_rows)]
    grown[p:, p:] = torch.eye(k, dtype=torch.bool, device=anc.device)
    return grown


# ---------------------------------------------------------------------------- the twin drafter
KNOBS = ("skip", "depth_limit", "max_nodes")


def assert_same_tree(new: DraftTree, ref: DraftTree) -> None:
    for name in ("tokens", "parents", "depth", "scores", "ancestors"):
        a, b = getattr(new, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a, b)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


class Twin:
    """A drafter running the new `TreeDrafter` and the reference on the same inputs; asserts equal trees.

    `random_knobs`: set `skip` / `depth_limit` / `max_nodes` at random each round (as the adaptive policy
    may); otherwise they are forwarded from whoever sets them (the policy).
    """

    def __init__(self, head, settings: TreeSettings, random_knobs: bool = False, seed: int = 0):
        object.__setattr__(self, "pair", (TreeDrafter(head, settings), ReferenceDrafter(head, settings)))
        object.__setattr__(self, "rng", random.Random(seed) if random_knobs else None)
        object.__setattr__(self, "rounds", 0)
        object.__setattr__(self, "drafted", 0)

    def __getattr__(self, name):  # levels, frontier_logp, the knobs: the new drafter's
        return getattr(self.pair[0], name)

    def __setattr__(self, name, value):
        if name in KNOBS:
            for drafter in self.pair:
                setattr(drafter, name, value)
        else:
            object.__setattr__(self, name, value)

    def observe(self, features):
        for drafter in self.pair:
            drafter.observe(features)

    def feedback(self, tree, path):
        pass

    def draft(self, input_ids, max_depth=None):
        rng, depth = self.rng, self.pair[0].settings.depth
        if rng is not None:
            self.skip = rng.random() < 0.15
            self.depth_limit = rng.choice([None, *range(1, depth + 1)])
            self.max_nodes = rng.choice([None, 1, 2, 5, 63])
        new, ref = (drafter.draft(input_ids, max_depth=max_depth) for drafter in self.pair)
        assert_same_tree(new, ref)
        a, b = self.pair
        assert a.levels == b.levels and a.context_len == b.context_len
        if b.frontier_logp is not None:
            assert torch.equal(a.frontier_logp, b.frontier_logp)
        object.__setattr__(self, "rounds", self.rounds + 1)
        object.__setattr__(self, "drafted", self.drafted + (not a.skip))
        return new


def twin_generate(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                  streamer=None, drafter=None, feature_layers=None, **model_kwargs):
    return run_tree_decoding(model, input_ids, drafter, logits_processor, stopping_criteria, generation_config,
                             streamer, feature_layers=feature_layers)


def decode(target, head, ids, drafter, max_new_tokens=24):
    out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, custom_generate=functools.partial(
        twin_generate, drafter=drafter, feature_layers=head.target_feature_layers))
    assert torch.equal(out, target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False))
    return out


def make_head(target, seed=0, scale=0.3, **overrides):
    """A random head; `scale` shrinks its matrices so that draft distributions are not one-hot (a random head
    at the target's init range puts ~all mass on one child, and the trees would hardly branch)."""
    torch.manual_seed(seed)
    head = FSPADDraftModel.from_target(target, **overrides).eval()
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return head


def prompt(seed: int, length: int = 11) -> torch.LongTensor:
    return torch.randint(0, 96, (1, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- identity
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_identical_trees_over_shapes(depth, top_k):
    target = make_target("llama", seed=depth)
    head = make_head(target, seed=top_k)
    total = {1: 1, 2: 5, 3: 12, 4: 30}[top_k]
    twin = Twin(head, TreeSettings(total, depth, top_k))
    decode(target, head, prompt(depth * 10 + top_k), twin)
    assert twin.drafted >= 3


@pytest.mark.parametrize("seed", range(3))
def test_identical_trees_with_random_policy_knobs(seed):
    target = make_target("qwen2", seed=seed)
    head = make_head(target, seed=seed)
    twin = Twin(head, TreeSettings(16, 5, 4), random_knobs=True, seed=seed)
    decode(target, head, prompt(seed, 40), twin, max_new_tokens=40)  # max_depth cuts the last rounds, too
    assert twin.rounds > twin.drafted > 3  # some rounds skipped


@pytest.mark.parametrize("layers,per_layer", [(2, 1), (3, 2)])
def test_identical_trees_with_pos_specialists(layers, per_layer):
    """PosS: a specialist first used deep in the tree catches up on the nodes it has not encoded."""
    target = make_target("llama", seed=5)
    head = make_head(target, seed=5, num_draft_layers=layers, positions_per_layer=per_layer)
    for depth, top_k in ((5, 3), (4, 4), (3, 1)):
        twin = Twin(head, TreeSettings(20, depth, top_k), random_knobs=True, seed=depth)
        decode(target, head, prompt(depth), twin)


def test_identical_trees_with_a_reduced_draft_vocabulary():
    target = make_target("mistral", seed=2)
    head = make_head(target, seed=2, draft_vocab_size=40)
    with torch.no_grad():
        head.d2t.copy_(torch.randperm(96, generator=torch.Generator().manual_seed(2))[:40])
    head.bind_target(target)
    decode(target, head, prompt(2), Twin(head, TreeSettings(12, 4, 3), random_knobs=True))


def test_identical_trees_with_an_eagle3_head():
    from fspad_hf.head.eagle3 import Eagle3DraftModel

    target = make_target("llama", seed=4, num_hidden_layers=8)
    torch.manual_seed(4)
    head = Eagle3DraftModel.from_target(target, draft_vocab_size=40).eval()
    with torch.no_grad():
        head.d2t.copy_(torch.randperm(96, generator=torch.Generator().manual_seed(4))[:40])
        for p in head.parameters():
            p.normal_(0, 0.3)
    decode(target, head, prompt(4), Twin(head, TreeSettings.resolve(head.config, tree_total_tokens=10, tree_depth=4,
                                                                     tree_top_k=3, tree_policy="static")))


def test_identical_trees_in_bfloat16():
    target = make_target("llama", seed=6, dtype=torch.bfloat16)
    head = make_head(target, seed=6)
    twin = Twin(head, TreeSettings(16, 4, 4), random_knobs=True, seed=6)
    out = target.generate(prompt(6), max_new_tokens=24, do_sample=False,
                          custom_generate=functools.partial(twin_generate, drafter=twin))
    assert out.shape[1] == 11 + 24 and twin.drafted > 3


def test_identical_trees_and_merges_with_retrieval():
    target = make_target("llama", seed=7)
    head = make_head(target, seed=7)
    settings = TreeSettings(12, 4, 3, retrieval_branches=2, retrieval_length=6)
    twin = Twin(head, settings, random_knobs=True, seed=7)
    ids = prompt(7, 8).repeat(1, 4)  # repetitive text: retrieval finds continuations
    decode(target, head, ids, RetrievalDrafter(2, 6, twin, settings.depth), max_new_tokens=30)
    # the merged trees agree too (merge_retrieved is a pure function of the head tree and the paths)
    new, ref = (_fed(d, target, ids).draft(ids) for d in (TreeDrafter(head, settings), ReferenceDrafter(head, settings)))
    for paths in ([[int(new.tokens[0]), 5, 6], [7]], [[9, 9, 9, 9]]):
        assert_same_tree(merge_retrieved(new, paths, 6), merge_retrieved(ref, paths, 6))


def _fed(drafter, target, ids):
    features, _ = target_forward(target, ids[:, :-1], DynamicCache())
    drafter.observe(features)
    return drafter


def test_identical_trees_under_the_adaptive_policy():
    target = make_target("llama", seed=8)
    head = make_head(target, seed=8)
    settings = TreeSettings(8, 5, 4, retrieval_branches=2, policy="adaptive")
    twin = Twin(head, settings)
    drafter = settings.adaptive(RetrievalDrafter(2, 8, twin, settings.depth), target, head=head)
    decode(target, head, prompt(8, 8).repeat(1, 3), drafter, max_new_tokens=30)
    assert twin.drafted >= 1


# ---------------------------------------------------------------------------- host overhead
def test_draft_reads_nothing_on_the_host(monkeypatch):
    target = make_target("llama", seed=9)
    head = make_head(target, seed=9, num_draft_layers=3, positions_per_layer=2)  # with a catch-up
    ids = prompt(9)
    drafter = _fed(TreeDrafter(head, TreeSettings(12, 5, 3)), target, ids)
    with counting_syncs(monkeypatch) as count:
        drafter.draft(ids)
    assert count.syncs == []


def test_the_adaptive_policy_reads_once_per_round(monkeypatch):
    """The policy prices the round from host floats of the cost table; its one read is the chosen sizes."""
    from tests.test_policy import cost_model

    target = make_target("llama", seed=10)
    head = make_head(target, seed=10)
    ids = prompt(10)
    settings = TreeSettings(8, 4, 4, policy="adaptive")
    drafter = AdaptiveDrafter(_fed(TreeDrafter(head, settings), target, ids), settings, cost_model((10.0, 11.0, 40.0)))
    with counting_syncs(monkeypatch) as count:
        tree = drafter.draft(ids)
    assert count.syncs == ["tolist"]
    assert tree.num_nodes == 1 and drafter.predicted_ms == 4 * 1.0 + 11.0  # 4 levels at 1 ms + verifying 2 tokens


def test_host_verify_costs_equal_the_curve_exactly():
    from fspad_hf.decoding.cost_model import CostModel, CostTable
    from fspad_hf.decoding.policy import CostCorrection

    rng = random.Random(11)
    ms = [[rng.uniform(5, 50) for _ in range(5)] for _ in range(3)]
    model = CostModel(CostTable("verify", [1, 2, 4, 16, 64], [64, 256, 1024], ms, {"kind": "verify"}, 0.0, 1, 0.0))
    fix = CostCorrection(0.8)
    for context in (10, 64, 100, 256, 700, 1024, 5000):  # below, on, between and above the calibrated contexts
        fix.verify_offset = rng.uniform(-30, 10)
        curve = model.verify_curve(context)
        assert curve.tolist() == [model.verify_ms(k, context) for k in range(1, 65)]
        assert fix.verify_curve(curve).tolist() == [fix.verify_ms(model.verify_ms(k, context)) for k in range(1, 65)]


# ---------------------------------------------------------------------------- prefix compaction
def test_accept_tells_prefix_paths_and_the_crop_equals_the_gather():
    from fspad_hf.decoding.cache import compact_cache
    from fspad_hf.decoding.verification import accept
    from tests.test_overhead import random_tree

    rng = random.Random(12)
    seen = set()
    for _ in range(60):
        tree = random_tree(rng, rng.randint(1, 12))
        choices = torch.randint(0, 24, (tree.num_nodes + 1,))
        if rng.random() < 0.7:
            choices[0] = tree.tokens[0]  # slot 1 accepted: often a prefix
        acc = accept(tree, choices)
        path = acc.path.tolist()
        assert acc.prefix == (path == list(range(len(path))))
        seen.add(acc.prefix)
        caches = []
        for prefix in (acc.prefix, False):  # the crop (when allowed) vs the gather
            cache = DynamicCache()
            cache.update(torch.randn(1, 2, 5 + tree.num_nodes + 1, 4, generator=torch.Generator().manual_seed(1)),
                         torch.randn(1, 2, 5 + tree.num_nodes + 1, 4, generator=torch.Generator().manual_seed(2)), 0)
            compact_cache(cache, 5, acc.path, prefix)
            caches.append(cache.layers[0])
        assert torch.equal(caches[0].keys, caches[1].keys) and torch.equal(caches[0].values, caches[1].values)
    assert seen == {True, False}
