"""Retrieval drafts: the incremental suffix index, the trie merge into the head's tree, and lossless
decoding with merged and retrieval-only trees (greedy identity, stops inside retrieved paths, sampling law)."""

import random

import pytest
import torch

import fspad_hf
from fspad_hf import FSPADConfig, FSPADDraftModel
from fspad_hf.decoding.retrieval import MergedTree, RetrievalDrafter, SuffixIndex, head_paths, merge_retrieved
from fspad_hf.decoding.settings import TreeSettings
from fspad_hf.decoding.tree import DraftTree, ancestor_mask
from tests.conftest import make_target
from tests.test_policy import cost_model

try:  # the pooled chi-square goodness of fit of the sampling suite
    from tests.test_sampling import chi_square_pvalue
except ImportError:  # before the sampling helpers moved out of the stress suite
    from tests.test_stress import chi_square_pvalue

SMALL_VOCAB = 5


# ------------------------------------------------------------------------------------ the index
def reference_lookup(tokens, max_branches, length, min_n=2, max_n=6):
    """Brute force over the whole context: longest n first, then most recent, same distinctness rule."""
    size, taken = len(tokens), []
    for n in range(min(max_n, size), min_n - 1, -1):
        suffix = tokens[size - n :]
        for end in range(size - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] != suffix:
                continue
            cont = tokens[end + 1 : end + 1 + length]
            for i, old in enumerate(taken):
                k = min(len(old), len(cont))
                if old[:k] == cont[:k]:
                    if len(cont) > len(old):
                        taken[i] = cont
                    break
            else:
                taken.append(cont)
            if len(taken) == max_branches:
                return taken
    return taken


def test_incremental_index_equals_rebuilt_and_brute_force():
    rng = random.Random(0)
    for trial in range(30):
        seq = [rng.randrange(4 if trial % 2 else 9) for _ in range(rng.randrange(1, 80))]
        inc = SuffixIndex()
        pos = 0
        while pos < len(seq):
            step = rng.randrange(1, 6)
            inc.extend(seq[pos : pos + step])
            pos += step
            full = SuffixIndex()
            full.extend(seq[:pos])
            assert inc.ends == full.ends and inc.tokens == full.tokens
            for branches, length in ((1, 3), (3, 5), (5, 8)):
                got = inc.lookup(branches, length, max_scan=10**9)
                assert got == reference_lookup(seq[:pos], branches, length), (seq[:pos], branches, length)


def test_longest_match_first_then_most_recent():
    ix = SuffixIndex(min_n=2, max_n=4)
    #        0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
    ix.extend([9, 1, 2, 3, 50, 8, 2, 3, 60, 9, 1, 2, 3, 70, 5])
    ix.extend([9, 1, 2, 3])  # suffix 9 1 2 3 (n=4) ends at 3 and 12; 2 3 (n=2) also ends at 7
    assert ix.lookup(1, 2) == [[70, 5]]  # n=4, most recent (end 12)
    assert ix.lookup(3, 2) == [[70, 5], [50, 8], [60, 9]]  # n=4 recent, n=4 older, then n=2 (end 7)
    assert ix.lookup_matches(3, 2) == [(4, [70, 5]), (4, [50, 8]), (2, [60, 9])]  # with their match lengths


def test_continuations_are_distinct_and_no_match_is_empty():
    ix = SuffixIndex()
    ix.extend([1, 2, 7, 8, 1, 2, 7, 8, 1, 2, 7, 9, 1, 2])
    got = ix.lookup(4, 3)
    assert got == [[7, 9, 1], [7, 8, 1]]  # the older 1 2 -> 7 8 1 duplicates are dropped
    for i, a in enumerate(got):
        for b in got[i + 1 :]:
            k = min(len(a), len(b))
            assert a[:k] != b[:k]
    short = SuffixIndex()
    short.extend([4, 5, 6, 4, 5])  # 4 5 ended at 1 -> continuation [6, 4, 5] (cut at the context end)
    assert short.lookup(2, 8) == [[6, 4, 5]]
    nothing = SuffixIndex()
    nothing.extend([1, 2, 3, 4, 5])
    assert nothing.lookup(4, 8) == []
    assert SuffixIndex().lookup(4, 8) == [] and nothing.lookup(0, 8) == []


def test_a_longer_continuation_replaces_its_prefix():
    ix = SuffixIndex(min_n=2, max_n=3)
    ix.extend([5, 1, 2, 3, 4, 6, 0, 1, 2, 3, 1, 2])  # most recent 1 2 -> [3, 1, 2]; older 5 1 2 -> [3, 4, 6]
    assert ix.lookup(3, 3) == [[3, 1, 2], [3, 4, 6]]
    ix2 = SuffixIndex(min_n=2, max_n=2)
    ix2.extend([1, 2, 3, 4, 1, 2, 3])
    ix2.extend([8, 2, 3])  # 2 3 -> most recent end 6: [8, 2, 3]; end 2: [4, 1, 2]
    assert ix2.lookup(4, 3) == [[8, 2, 3], [4, 1, 2]]


# ------------------------------------------------------------------------------------ the merge
def hand_tree():
    # root -> 4 (1), 7 (2); 4 -> 5 (3), 6 (4); 5 -> 9 (5)
    parents = torch.tensor([0, 0, 1, 1, 3])
    depth = torch.tensor([1, 1, 2, 2, 3])
    return DraftTree(torch.tensor([4, 7, 5, 6, 9]), parents, depth, ancestor_mask(parents, 3),
                     scores=torch.tensor([-0.1, -1.0, -0.2, -2.0, -0.3]))


def root_paths(tree) -> list[tuple]:
    toks = tree.tokens.tolist()
    return [tuple(toks[i - 1] for i in torch.nonzero(tree.ancestors[s]).flatten().tolist()[1:])
            for s in range(1, tree.num_nodes + 1)]


def check_well_formed(tree):
    t = tree.num_nodes
    assert bool((tree.parents < torch.arange(1, t + 1)).all()), "ancestors must precede descendants"
    parent_depth = torch.cat([torch.zeros(1, dtype=torch.long), tree.depth])[tree.parents]
    assert torch.equal(tree.depth, parent_depth + 1)
    assert torch.equal(tree.ancestors, ancestor_mask(tree.parents, max(tree.max_depth, 1)))
    keys = list(zip(tree.parents.tolist(), tree.tokens.tolist()))
    assert len(keys) == len(set(keys)), "siblings must be distinct"
    assert tree.source is not None and tree.source.shape == tree.tokens.shape


def test_merge_shares_prefixes_and_keeps_siblings_distinct():
    tree = hand_tree()
    merged = merge_retrieved(tree, [[4, 5, 9, 1], [4, 8], [7], [3, 3]], max_depth=None, tree_depth=3)
    check_well_formed(merged)
    assert torch.equal(merged.tokens[:5], tree.tokens) and torch.equal(merged.parents[:5], tree.parents)
    assert merged.tokens[5:].tolist() == [1, 8, 3, 3]  # only the new nodes are appended
    assert merged.parents[5:].tolist() == [5, 1, 0, 8]  # 1 under 9, 8 under 4, 3 under root, 3 under that 3
    assert merged.source.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert merged.retrieved.tolist() == [True, True, True, False, True, True, True, True, True]  # all but 4-6 shared
    assert set(root_paths(merged)) == set(root_paths(tree)) | {(4, 5, 9, 1), (4, 8), (3,), (3, 3)}
    assert torch.isnan(merged.scores[5:]).all() and torch.equal(merged.scores[:5], tree.scores)


def test_merge_records_each_retrieved_node_s_longest_match():
    # two paths share their first token: the shared node carries the larger match; head nodes carry 0
    only = merge_retrieved(None, [[1, 2], [1, 3], [5]], max_depth=8, matches=[2, 5, 3])
    assert only.tokens.tolist() == [1, 2, 3, 5] and only.match.tolist() == [5, 2, 5, 3]
    merged = merge_retrieved(hand_tree(), [[4, 5, 9, 1], [3]], matches=[6, 2])
    assert merged.match.tolist() == [0, 0, 0, 0, 0, 6, 2]  # 4, 5, 9 were head nodes
    assert merge_retrieved(hand_tree(), [[4, 8]]).match.tolist() == [0] * 5 + [0]  # no match lengths given


def test_merge_respects_the_depth_limit_and_handles_no_tree_or_no_paths():
    tree = hand_tree()
    merged = merge_retrieved(tree, [[4, 5, 2, 2, 2], [1, 2, 3]], max_depth=2, tree_depth=3)
    check_well_formed(merged)
    new = merged.source == 1
    assert int(merged.depth[new].max()) <= 2 and merged.tokens[new].tolist() == [1, 2]
    only = merge_retrieved(None, [[1, 2, 3], [1, 2, 4], [5]], max_depth=8)
    check_well_formed(only)
    assert only.tokens.tolist() == [1, 2, 3, 4, 5] and only.parents.tolist() == [0, 1, 2, 2, 0]
    assert only.source.tolist() == [1] * 5
    same = merge_retrieved(tree, [])
    assert torch.equal(same.tokens, tree.tokens) and same.source.tolist() == [0] * 5
    empty = merge_retrieved(None, [])
    assert empty.num_nodes == 0 and empty.ancestors.shape == (1, 1)


def test_merge_is_the_union_of_root_paths_on_random_trees():
    rng = random.Random(1)
    for _ in range(60):
        # random head tree with distinct siblings, ancestors first
        tokens, parents, depth = [], [], []
        for slot in range(1, rng.randrange(0, 14) + 1):
            parent = rng.randrange(0, slot)
            used = {tokens[i] for i in range(len(tokens)) if parents[i] == parent}
            free = [t for t in range(6) if t not in used]
            if not free or (parent and depth[parent - 1] >= 4):
                break
            tokens.append(rng.choice(free)); parents.append(parent)
            depth.append(1 + (depth[parent - 1] if parent else 0))
        p = torch.tensor(parents, dtype=torch.long)
        d = torch.tensor(depth, dtype=torch.long)
        tree = DraftTree(torch.tensor(tokens, dtype=torch.long), p, d, ancestor_mask(p, 4)) if tokens else None
        paths = [[rng.randrange(6) for _ in range(rng.randrange(1, 7))] for _ in range(rng.randrange(0, 5))]
        limit = rng.choice([None, 2, 3, 8])
        merged = merge_retrieved(tree, paths, max_depth=limit, tree_depth=4 if tree else None)
        check_well_formed(merged)
        cut = [tuple(q[: limit or len(q)]) for q in paths]
        want = set(root_paths(tree) if tree else []) | {q[:k] for q in cut for k in range(1, len(q) + 1)}
        got = root_paths(merged)
        assert set(got) == want and len(got) == len(want)
        head = set(root_paths(tree)) if tree else set()
        assert [int(s) for s in merged.source] == [0 if q in head else 1 for q in got]
        retrieved = {q[:k] for q in cut for k in range(1, len(q) + 1)}  # shared head nodes included
        assert merged.retrieved.tolist() == [q in retrieved for q in got]
        if tree is not None:
            w = 4
            hp = head_paths(tree, w)
            for j, q in enumerate(root_paths(tree)):
                assert hp[j].tolist() == list(q) + [-1] * (w - len(q))


def test_retrieval_drafter_indexes_only_new_tokens():
    drafter = RetrievalDrafter(branches=2, length=3)
    ids = torch.tensor([[1, 2, 3, 4, 1, 2]])
    tree = drafter.draft(ids, max_depth=10)
    assert isinstance(tree, MergedTree) and tree.tokens.tolist() == [3, 4, 1] and len(drafter.index) == 6
    ids = torch.cat([ids, torch.tensor([[3, 9]])], dim=1)
    before = dict(drafter.index.ends)
    tree = drafter.draft(ids, max_depth=1)  # depth limit: one token per path
    assert len(drafter.index) == 8 and tree.num_nodes == 0  # suffix 3 9 / 9: no earlier occurrence
    assert all(before[k] == v[: len(before[k])] for k, v in drafter.index.ends.items() if k in before)
    ids = torch.cat([ids, torch.tensor([[1, 2]])], dim=1)
    tree = drafter.draft(ids, max_depth=1)
    assert tree.tokens.tolist() == [3] and tree.depth.tolist() == [1]


# ------------------------------------------------------------------------------------ settings
def test_settings_and_config_defaults():
    cfg = FSPADConfig()  # the default: the adaptive policy with 4 retrieval branches
    assert cfg.retrieval_branches == 4 and cfg.retrieval_length == 8 and cfg.tree_policy == "adaptive"
    s = TreeSettings.resolve(None, retrieval_branches=3)
    assert (s.retrieval_branches, s.retrieval_length, s.depth) == (3, 8, cfg.tree_depth)
    assert TreeSettings(12, 4, 3).retrieval_branches == 0
    with pytest.raises(ValueError, match="retrieval_branches"):
        TreeSettings(12, 4, 3, retrieval_branches=-1)
    with pytest.raises(ValueError, match="retrieval_length"):
        FSPADConfig(retrieval_length=0)
    assert TreeSettings.pop_keywords({"retrieval_length": 4, "x": 1}) == {"retrieval_length": 4}


# ------------------------------------------------------------------------------------ decoding
def repeated_prompt(seed: int, phrase: int = 12, times: int = 3) -> torch.LongTensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 96, (phrase,), generator=g).repeat(times)[None]


@pytest.fixture(scope="module")
def repeating():
    """A random target and a prompt of its own greedy text (a repeated phrase, then 36 tokens of its
    continuation): the continuation repeats what the prompt holds, so retrieval matches often."""
    target = make_target("llama", seed=2)
    ids = target.generate(repeated_prompt(2), max_new_tokens=36, do_sample=False)
    ref = target.generate(ids, max_new_tokens=48, do_sample=False)
    return target, ids, ref


# What-if costs under which every retrieved node pays: identity and the sampling law are tested on trees that
# hold retrieved nodes, whatever this machine's measured costs (and its load: with them, the guard of rule step 7
# sometimes judged retrieved trees losing to plain steps on a busy machine, and no node was ever verified)
# would make the adaptive policy verify.
FLAT = cost_model([10.0] * 64, 0.1)


def retrieval_only(target, ids, **kwargs):
    kwargs.setdefault("cost_model", FLAT)
    out = target.generate(ids, custom_generate=fspad_hf.tree_generate, do_sample=False, **kwargs)
    return out, fspad_hf.tree_generate.last_generation_stats


@pytest.mark.parametrize("arch,seed,n", [("llama", 2, 40), ("llama", 0, 40), ("gemma3", 0, 40), ("mistral", 2, 40),
                                         ("qwen2", 0, 60)])
def test_retrieval_only_greedy_identity(arch, seed, n):
    target = make_target(arch, seed=seed)
    ids = repeated_prompt(seed)
    ref = target.generate(ids, max_new_tokens=n, do_sample=False)
    out, stats = retrieval_only(target, ids, retrieval_branches=3, max_new_tokens=n)
    assert torch.equal(out, ref)
    assert sum(stats.accepted_from_retrieval) > 0, "retrieval never matched: the test would be vacuous"
    assert stats.accepted_from_retrieval == stats.accepted_lengths  # every drafted node is a retrieval node
    assert stats.settings.retrieval_branches == 3


@pytest.mark.parametrize("arch,seed", [("llama", 2), ("llama", 0), ("gemma3", 0), ("mistral", 2)])
def test_merged_tree_greedy_identity(arch, seed):
    target = make_target(arch, seed=seed)
    # the static tree: every round merges the head's 10 nodes with the retrieved ones (the adaptive default may
    # rightly shrink trees on this machine's measured costs, and then the merge below would not be exercised)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=10, tree_depth=4, tree_top_k=3, tree_policy="static")
    ids = repeated_prompt(seed)
    ref = target.generate(ids, max_new_tokens=40, do_sample=False)
    out = target.generate(ids, assistant_model=head, retrieval_branches=3, retrieval_length=6, max_new_tokens=40)
    assert torch.equal(out, ref)
    stats = head.last_generation_stats
    assert sum(stats.accepted_from_retrieval) > 0, "retrieval never matched: the test would be vacuous"
    assert sum(stats.retrieval_nodes) > 0 and max(stats.tree_sizes) > 10  # head nodes + retrieved ones
    assert all(r <= a for r, a in zip(stats.accepted_from_retrieval, stats.accepted_lengths))
    summary = stats.summary()
    assert summary["accepted_from_retrieval"] + summary["accepted_from_head"] == sum(stats.accepted_lengths)
    # the same through the patch-free route, with retrieval defaults from the head config
    head.config.retrieval_branches = 3
    try:
        out = target.generate(ids, custom_generate=fspad_hf.tree_generate, draft_model=head, max_new_tokens=40,
                              do_sample=False)
    finally:
        head.config.retrieval_branches = 0
    assert torch.equal(out, ref) and sum(head.last_generation_stats.accepted_from_retrieval) > 0


def test_without_retrieval_nothing_is_attributed_to_it(repeating):
    target, ids, ref = repeating
    head = FSPADDraftModel.from_target(target, tree_total_tokens=6, tree_depth=3, tree_top_k=2)
    out = target.generate(ids, assistant_model=head, max_new_tokens=20, retrieval_branches=0)
    assert torch.equal(out, ref[:, : ids.shape[1] + 20])
    assert set(head.last_generation_stats.accepted_from_retrieval) == {0}


def stops_inside_path(stats) -> bool:
    """The last round stopped on an accepted drafted node (not on the bonus token)."""
    if not stats.num_rounds:
        return False  # stopped on the prefill's token
    return stats.new_tokens_per_round[-1] <= stats.accepted_lengths[-1] and stats.accepted_from_retrieval[-1] > 0


def test_eos_inside_a_retrieved_path(repeating):
    target, ids, ref = repeating
    cont = ref[0, ids.shape[1] :].tolist()
    found = 0
    for pos, tok in enumerate(cont):
        if tok in cont[:pos]:
            continue  # plain decoding must stop right here (the token may occur in the prompt)
        plain = target.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=tok, pad_token_id=tok)
        out, stats = retrieval_only(target, ids, retrieval_branches=2, max_new_tokens=48, eos_token_id=tok,
                                    pad_token_id=tok)
        assert torch.equal(out, plain) and out.shape[1] == ids.shape[1] + pos + 1
        found += stops_inside_path(stats)
        if found >= 2:
            break
    assert found, "no EOS fell inside an accepted retrieved path: the test would be vacuous"


def test_max_new_tokens_inside_a_retrieved_path(repeating):
    target, ids, ref = repeating
    found = 0
    for n in range(2, 40):
        out, stats = retrieval_only(target, ids, retrieval_branches=2, max_new_tokens=n)
        assert torch.equal(out, ref[:, : ids.shape[1] + n])
        found += stops_inside_path(stats)
        if found >= 3:
            break
    assert found, "max_new_tokens never fell inside an accepted retrieved path: the test would be vacuous"


def test_clear_error_without_head_or_retrieval(repeating):
    target, ids, _ = repeating
    with pytest.raises(ValueError, match="draft_model.*retrieval_branches"):
        target.generate(ids, custom_generate=fspad_hf.tree_generate, max_new_tokens=3)
    with pytest.raises(ValueError, match="draft_model.*retrieval_branches"):
        target.generate(ids, custom_generate=fspad_hf.tree_generate, retrieval_branches=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="only valid with assistant_model"):
        target.generate(ids, retrieval_branches=2, max_new_tokens=3)


# ------------------------------------------------------------------------------------ sampling law
def exact_joint(target, prompt: torch.LongTensor, n_tokens: int, gen_kwargs: dict) -> dict[tuple, float]:
    """Exact law of the first `n_tokens` sampled tokens, from plain generate()'s own processed scores."""
    probs: dict[tuple, float] = {(): 1.0}
    for _ in range(n_tokens):
        grown = {}
        for prefix, p in probs.items():
            ids = torch.cat([prompt, torch.tensor([prefix], dtype=torch.long).reshape(1, -1)], dim=1)
            out = target.generate(ids, max_new_tokens=1, return_dict_in_generate=True, output_scores=True, **gen_kwargs)
            step = torch.softmax(out.scores[0][0].float(), dim=-1)
            grown.update({prefix + (tok,): p * float(step[tok]) for tok in range(SMALL_VOCAB) if p * float(step[tok]) > 0})
        probs = grown
    return probs



@pytest.mark.parametrize("with_head", [False, True])
def test_sampling_law_with_retrieval(with_head):
    """Retrieved drafts are deterministic: the target's own draw at each slot still decides every token."""
    target = make_target("llama", seed=11, vocab_size=SMALL_VOCAB, initializer_range=0.2)
    # a shallow head tree, so that deeper retrieved nodes are accepted on their own
    head = FSPADDraftModel.from_target(target, tree_total_tokens=2, tree_depth=1, tree_top_k=2) if with_head else None
    prompt = target.generate(torch.tensor([[1, 3, 0, 2]]), max_new_tokens=20, do_sample=False)  # its own text
    kwargs = {"do_sample": True, "top_k": None, "temperature": 0.9}
    probs = exact_joint(target, prompt, 3, kwargs)
    route = {"assistant_model": head} if with_head else {"custom_generate": fspad_hf.tree_generate}
    n = 500
    torch.manual_seed(7)
    counts, from_retrieval = {}, 0
    for _ in range(n):
        out = target.generate(prompt, max_new_tokens=3, retrieval_branches=2, retrieval_length=3, cost_model=FLAT,
                              **route, **kwargs)
        seq = tuple(out[0, prompt.shape[1] :].tolist())
        counts[seq] = counts.get(seq, 0) + 1
        stats = head.last_generation_stats if with_head else fspad_hf.tree_generate.last_generation_stats
        from_retrieval += sum(stats.accepted_from_retrieval)
    assert from_retrieval / n > 0.2, f"too few tokens accepted from retrieval ({from_retrieval / n:.2f} per call)"
    pvalue = chi_square_pvalue(counts, probs, n)
    assert pvalue > 1e-3, f"chi-square p={pvalue:.2e}: sampling with retrieval does not follow the target's law"
