"""Issue 12 item 6: the decoding loop's overhead cuts keep exact behaviour (no timing here).

- the vectorised `_emit` (MaxLengthCriteria / EosTokenCriteria only) stops exactly where the per-token loop
  and plain generate() stop; any other criterion (StopStringCriteria, MaxTimeCriteria, a subclass) falls back;
- host reads per round: none in `GenerationStats.add_round`, one in `accept` (which also tells a prefix path),
  one in `merge_retrieved`;
- the in-place tree mask equals the reference `additive_mask(tree_attention_allowed(...))`;
- the merged tree's extended ancestor mask equals a rebuilt one.
"""

import contextlib
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StopStringCriteria,
)

from fspad_hf.decoding import generation
from fspad_hf.decoding.generation import _emit, vector_stop_rule
from fspad_hf.decoding.retrieval import merge_retrieved
from fspad_hf.decoding.stats import GenerationStats
from fspad_hf.decoding.tree import ancestor_mask, select_tree, tree_attention_allowed
from fspad_hf.decoding.verification import accept
from fspad_hf.masks import additive_mask, tree_additive_mask
from tests.conftest import OracleDrafter, generate_with_oracle, make_target, tiny_chat_tokenizer


class CountSyncs(TorchDispatchMode):
    """Host reads of tensor values: `.item()`-like scalars, value-dependent shapes, and `tolist()`."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero", "masked_select"):
            self.syncs.append(name)
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.syncs.append("bool index")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_syncs(monkeypatch):
    mode = CountSyncs()
    tolist = torch.Tensor.tolist

    def counted(self, *a, **k):
        mode.syncs.append("tolist")
        return tolist(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    with mode:
        yield mode
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)


def random_tree(rng: random.Random, n: int, vocab: int = 6):
    """A draft tree of `n` created nodes with distinct siblings (select_tree keeps an ancestor-closed subset)."""
    parents, depth, tokens, seen = [], [], [], set()
    for i in range(n):
        parent = rng.randint(-1, i - 1)
        tok = next(t for t in rng.sample(range(vocab * 4), vocab * 4) if (parent, t) not in seen)
        seen.add((parent, tok))
        parents.append(parent)
        depth.append(1 if parent < 0 else depth[parent] + 1)
        tokens.append(tok % (vocab * 4))
    return select_tree(torch.tensor(tokens), -torch.rand(n).cumsum(0), torch.tensor(parents), torch.tensor(depth),
                       rng.randint(1, n))


# ---------------------------------------------------------------------------- _emit
def test_vectorised_emit_matches_the_token_loop():
    rng = random.Random(0)
    cases = 0
    for _ in range(400):
        length, n = rng.randint(1, 6), rng.randint(1, 7)
        prefix = torch.randint(0, 8, (1, length))
        new = torch.randint(0, 8, (n,))
        criteria = StoppingCriteriaList()
        if rng.random() < 0.8:
            criteria.append(MaxLengthCriteria(length + rng.randint(1, n + 2)))  # often inside the new tokens
        for _ in range(rng.randint(0, 2)):
            criteria.append(EosTokenCriteria(rng.sample(range(8), rng.randint(1, 2))))
        rule = vector_stop_rule(criteria, prefix.device)
        assert rule is not None
        fast = _emit(new, prefix, criteria, None, rule)
        slow = _emit(new, prefix, criteria, torch.zeros(n, 3))
        assert torch.equal(fast[0], slow[0]) and fast[1:] == slow[1:], (prefix, new, fast, slow)
        cases += fast[2] and fast[1] < n  # stopped inside the new tokens
    assert cases > 50  # EOS / max_length inside the new tokens was exercised


def test_stop_rule_needs_exactly_max_length_and_eos():
    max_len, eos = MaxLengthCriteria(20), EosTokenCriteria([3, 5])
    rule = vector_stop_rule(StoppingCriteriaList([max_len, MaxLengthCriteria(15), eos]), torch.device("cpu"))
    assert rule[0] == 15 and rule[1].tolist() == [3, 5]
    assert vector_stop_rule(StoppingCriteriaList(), torch.device("cpu")) == (None, None)

    class MyEos(EosTokenCriteria):  # a subclass may stop differently: never vectorised
        pass

    stop_strings = StopStringCriteria(tiny_chat_tokenizer(), ["fox"])
    for other in (stop_strings, MaxTimeCriteria(60.0), MyEos(3)):
        assert vector_stop_rule(StoppingCriteriaList([max_len, other, eos]), torch.device("cpu")) is None


@pytest.fixture
def oracle_case():
    target = make_target("llama", seed=3)
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(3))
    full = target.generate(ids, max_new_tokens=60, do_sample=False)
    return target, ids, full


def test_eos_and_max_new_tokens_inside_a_path_take_the_vectorised_path(oracle_case, monkeypatch):
    target, ids, full = oracle_case
    gen = full[0, ids.shape[1]:]
    plain = {}
    for pos in (2, 7, 11):
        eos = int(gen[pos])
        plain[pos] = target.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=eos)
    calls = []
    for cls in (MaxLengthCriteria, EosTokenCriteria):
        monkeypatch.setattr(cls, "__call__", lambda self, *a, **k: calls.append(self) or torch.ones(1, dtype=torch.bool))
    for pos in (2, 7, 11):  # EOS inside the oracle's fully accepted 5-token paths
        out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=60, do_sample=False,
                                   eos_token_id=int(gen[pos]))
        assert torch.equal(out, plain[pos])
    for max_new in (3, 8, 16):  # max_new_tokens inside a path
        out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=max_new, do_sample=False)
        assert torch.equal(out, full[:, : ids.shape[1] + max_new])
    assert not calls, "the stopping criteria were called token by token: the vectorised path was not taken"


def test_stop_strings_fall_back_to_the_token_loop(oracle_case):
    target, ids, full = oracle_case
    tokenizer = tiny_chat_tokenizer()
    text = [tokenizer.decode([t]) for t in full[0, ids.shape[1]:].tolist()]
    stops = 0
    for pos in (4, 9, 13):
        stop = text[pos]
        if not stop.strip() or any(stop in t for t in text[:pos]):
            continue
        criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, [stop])])
        kwargs = dict(max_new_tokens=60, do_sample=False, stopping_criteria=criteria)
        ref = target.generate(ids, **kwargs)
        out = generate_with_oracle(target, ids, OracleDrafter(full, depth=5), **kwargs)
        assert torch.equal(out, ref)
        stops += out.shape[1] < full.shape[1]
    assert stops, "no stop string fell inside the generation: the test would be vacuous"


def test_the_rule_is_built_once_per_call(oracle_case, monkeypatch):
    target, ids, full = oracle_case
    built = []
    original = generation.vector_stop_rule
    monkeypatch.setattr(generation, "vector_stop_rule", lambda *a: built.append(1) or original(*a))
    generate_with_oracle(target, ids, OracleDrafter(full, depth=5), max_new_tokens=30, do_sample=False)
    assert built == [1]


# ---------------------------------------------------------------------------- host syncs
def test_stats_round_reads_nothing_and_finish_reads_once(monkeypatch):
    rng = random.Random(1)
    head = random_tree(rng, 12)
    merged = merge_retrieved(head, [[int(head.tokens[0]), 90, 91], [92, 93]], 6, "cpu")
    assert int(merged.source[-1]) == 1
    path = torch.nonzero(merged.ancestors[-1]).flatten()  # accepted: the root path of the last (retrieved) node
    stats = GenerationStats()
    with counting_syncs(monkeypatch) as count:
        stats.add_round(path.shape[0] - 1, path.shape[0], 0.0, 0.0, merged, path)
        stats.add_round(0, 1, 0.0, 0.0, head, torch.tensor([0]))
        stats.add_round(0, 1, 0.0, 0.0, select_tree(*(torch.zeros(0, dtype=torch.long),) * 4, 0, 0))  # empty tree
    assert count.syncs == []
    with counting_syncs(monkeypatch) as count:
        stats.finish()
    assert count.syncs == ["tolist"]
    assert stats.retrieval_nodes == [int(merged.source.sum()), 0, 0]
    assert stats.accepted_from_retrieval == [int(merged.source[path[1:] - 1].sum()), 0, 0]
    deepest = [int(merged.depth.max()), int(head.depth.max()), 0]
    assert stats.position_trials == [sum(d > p for d in deepest) for p in range(max(deepest))]
    accepted = path.shape[0] - 1
    assert stats.position_accepts == [int(p < accepted) for p in range(max(deepest))]
    stats.finish()  # idempotent
    assert len(stats.retrieval_nodes) == 3


def test_accept_reads_once(monkeypatch):
    rng = random.Random(2)
    for _ in range(20):
        tree = random_tree(rng, rng.randint(1, 20))
        choices = torch.randint(0, 24, (tree.num_nodes + 1,))
        choices[0] = tree.tokens[0]  # at least one accepted node
        with counting_syncs(monkeypatch) as count:
            acc = accept(tree, choices)
        assert count.syncs == ["tolist"]  # the deepest slot and its depth, read together
        # reference: walk down from the root following the target's choices
        slot, path = 0, [0]
        while True:
            kids = [j + 1 for j in range(tree.num_nodes) if int(tree.parents[j]) == slot]
            nxt = [k for k in kids if int(tree.tokens[k - 1]) == int(choices[slot])]
            if not nxt:
                break
            slot = nxt[0]
            path.append(slot)
        assert acc.path.tolist() == path and int(acc.bonus) == int(choices[slot])
        assert acc.prefix == (path == list(range(len(path))))


def test_merge_reads_once_and_extends_the_ancestor_mask_exactly(monkeypatch):
    rng = random.Random(3)
    for trial in range(150):
        tree = random_tree(rng, rng.randint(1, 25)) if trial % 5 else None
        paths = [[rng.randint(0, 23) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(1, 4))]
        if tree is not None and rng.random() < 0.5:  # a path through the head's tree: shared prefixes
            node = rng.randrange(tree.num_nodes)
            on_path = torch.nonzero(tree.ancestors[node + 1]).flatten()[1:] - 1
            paths[0] = tree.tokens[on_path].tolist() + paths[0]
        with counting_syncs(monkeypatch) as count:
            merged = merge_retrieved(tree, paths, rng.choice([None, 4, 8]), "cpu")
        assert count.syncs == ["nonzero"]
        depth = int(merged.depth.max()) if merged.num_nodes else 0
        assert torch.equal(merged.ancestors, ancestor_mask(merged.parents, depth))


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("window", [None, 1, 3, 50])
def test_tree_mask_equals_the_reference(window):
    rng = random.Random(4)
    for dtype in (torch.float32, torch.bfloat16):
        for _ in range(20):
            tree = random_tree(rng, rng.randint(1, 20))
            ctx = rng.randint(0, 12)
            positions = ctx + torch.cat([tree.depth.new_zeros(1), tree.depth])
            ref = additive_mask(tree_attention_allowed(tree.ancestors, ctx, positions, window), dtype)
            assert torch.equal(tree_additive_mask(tree.ancestors, ctx, dtype, positions, window), ref)
