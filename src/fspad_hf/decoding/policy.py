"""The adaptive tree policy (`tree_policy="adaptive"`): how many drafted nodes to verify, and how deep to draft.

Opt-in (the default `tree_policy="static"` verifies the head's fixed `tree_total_tokens / tree_depth /
tree_top_k` tree). `AdaptiveDrafter` wraps the round's drafter (the head's `TreeDrafter`, a
`RetrievalDrafter`, or both) and prunes each candidate tree before verification.

The rule, per round:

1. Acceptance estimates. Every candidate node i at depth d gets p_i, its estimated probability of
   being accepted:
   - head node, cumulative draft log-probability s_i (drafter.py `scores`, tree.py `select_tree`):
     p_i = min(1, c_d * exp(s_i)), c_d = the head calibration of depth d;
   - retrieval node (`MergedTree.source == 1`, no draft log-probability): p_i = r_{n,d}, the retrieval
     rate of depth d for paths that followed an n-gram match (`MergedTree.match`; n = 2..6 by default);
   - then p_i = min over i's ancestors (itself included) of p, so a child never beats its parent and
     every top-T set by p (ties to the earlier slot, i.e. ancestors first) is ancestor-closed.
2. Calibration, learned online from verified rounds, per depth d, as exponential moving averages
   (weight `decay` on the past; a depth is only updated by rounds that verified such a node):
   - c_d = clip(A_d / P_d, c_min, c_max), A_d = EMA of [the accepted path holds a head node at
     depth d], P_d = EMA of the sum of exp(s_i) over the verified head nodes at depth d
     (prior A_d = P_d = 1: c_d = 1);
   - r_{n,d} = clip((A'_{n,d} + w r_d) / (O'_{n,d} + w), r_min, 1), A'_{n,d} = discounted count (weight
     `decay` per round that verified such a node) of accepted retrieval nodes of match n at depth d,
     O'_{n,d} the same of verified ones, w = `retrieval_weight` pseudo-nodes; r_d, the pooled rate of all
     retrieval nodes at depth d, is (A'_d + w retrieval_prior) / (O'_d + w). Counts, not means: a round
     that verified four chains and accepted none moves the rate far (0.5 -> 0.1), an EMA of means 10%.
     Why n: on copy-heavy text (extraction) long matches continue for many tokens, on text that only
     reuses words of the input (summarization) 2-gram matches rarely do; one rate per depth learned
     on the one overpriced the other (measured on Spec-Bench summarization, fp32: retrieval chains
     predicted 2.5 tokens per round, 1.4 realised).
3. Tree size. With the candidates sorted by p (descending), verify the T best, T maximising the
   expected new tokens per ms of the round:
       rate(T) = (1 + sum_{i <= T} p_i) / (t_draft + t_verify(T + 1)),   T = 0 .. min(candidates, 63),
   t_verify(k) = `CostModel.verify_curve(context)[k - 1]`, t_draft = levels drafted this round x
   `CostModel.draft_level_ms(top_k, context)` (0 when the head drafted nothing). T = 0 verifies the
   root alone (a plain step). Ties go to the smaller T. Only sizes whose cost was measured are
   candidates (T + 1 a point of the table's grid, `CostTable.measured`): between grid points a forward
   can cost far more than the interpolation says. `choose_size` is this step alone. (All times are
   the corrected ones of step 5; e is added to t_draft.)
4. Draft depth. The frontier of level L (the K nodes the drafter would expand) bounds what level
   L + 1 can add: gain_{L+1} = sum over that frontier of min(1, c_{L+1} exp(s)). Level L + 1 pays if
   gain_{L+1} >= s x draft_level_ms / (t_verify(1) + o + e) (one level's cost in plain-step tokens).
   The next round drafts 1 + (the number of leading paying levels), at most `tree_depth`. The decision
   is read with the round's one host sync (no sync per level), so it lags one round; the deepest
   drafted level's frontier is always known, so the depth can grow by one level per round. A new call
   starts at the depth the last one ended with (`learned_state`).
5. Measured costs. The tables are calibrated apart from decoding (`fspad-hf calibrate`), often on a
   machine busier or quieter than now, and they price the target forward alone. Each round therefore
   compares what it predicted with what the loop measured (`GenerationStats.draft_seconds`,
   `verify_seconds`, and the wall time between two `draft` calls) and keeps three EMAs (weight `decay`):
   the draft scale s = EMA(measured draft ms) / EMA(predicted draft ms) (clipped to 0.25..4), the
   verification offset o = EMA(measured verify ms - t_verify(T + 1)) (mask, acceptance and cache
   compaction included; the corrected curve is kept >= half the table), and the other time per round
   e = EMA(round ms - draft ms - verify ms) (emitting tokens, statistics, the next round's bookkeeping).
   Steps 3 and 4 use t_draft = s x levels x draft_level_ms, t_verify(k) + o, and add e to every round.
6. Plain steps. After `patience` consecutive drafted rounds that chose T = 0, the head drafts nothing
   (retrieval candidates, cheap, are still offered and priced) except one probe round every
   `probe_every` rounds; a probe that chooses T > 0 resumes drafting, so a change of text (a
   copy-heavy passage, an easy stretch) is noticed. A probe that again chooses T = 0 doubles the gap to
   the next (as in step 7: up to `max_probe_gap` x `probe_every`, back to `probe_every` when drafting
   resumes and at each new call): on a machine where trees never pay, probes cost less and less
   (benchmarks/plain_overhead.py measures what the loop costs over plain decoding there).
7. Realised-rate guard. Steps 3-4 price a round once its draft is paid (a sunk cost), so a head whose
   trees only break even on the verification still loses its draft time every round. The policy
   therefore keeps EMAs (weight `cost_decay`) of emitted tokens and wall ms per round, apart for rounds
   where the head drafted and rounds where it did not (`RoundRates`); after `guard_rounds` drafted
   rounds, when their tokens per ms fall below those of the undrafted rounds (before one was measured:
   below one token per corrected plain step, t_verify(1) + o + e), the head stops drafting as in step 6
   and probes every `probe_every` rounds, each probe updating the drafted EMA; each probe after which the
   guard still holds doubles the gap to the next (up to `max_probe_gap` x `probe_every`; back to
   `probe_every` when drafting resumes, and at each new call): in a call where the head loses, its
   probes cost less and less, and a new prompt is looked at afresh.
   The alternative the head is compared with:
   - with retrieval on, the *retrieval shadow* of the same drafted rounds (decoding/round_costs.py):
     each drafted round also prices the tree retrieval alone would have verified (its nodes, shared ones
     included, priced as retrieval nodes, sized by step 3 with no draft cost: T_r nodes) and counts the
     tokens it would have emitted, 1 + the leading nodes of the accepted path it held (exact where both
     trees hold the path: the target's choice at a slot does not depend on the tree; a lower bound where
     retrieval's tree reached past the verified one); its ms are the corrected t_verify(T_r + 1) + e.
     Paired rounds on the same text: in copy-heavy text, where retrieval alone wins, the head's extra
     tokens do not pay for its draft and larger verification, and the guard sees it within a few rounds
     (the earlier comparison with occasional rounds without the head needed tens of rounds to tell; it
     left the default 4-20% below retrieval alone in four fp32 categories on a Zen 5 EPYC, session 10);
   - without retrieval, every `probe_every`-th round is drafted without the head (a plain probe) until
     `guard_rounds` undrafted rounds are known, then every 4 x `probe_every`-th: the plain step's real
     cost is measured, not assumed from a table that may have been calibrated under other load;
   - in both cases a plain step too: one token per measured plain round (no head, no tree verified), or
     per corrected plain step before one was measured; the head must beat the better of the two.
   The same guard one level down, for rounds without the head (the head skipping, or head-free retrieval):
   once `guard_rounds` of them verified a retrieved tree, when those realise fewer tokens per ms than plain
   steps, retrieved trees are not verified (plain steps) except at probes, one every `probe_every` rounds,
   the gap doubling after each probe that verified a tree and still lost (`retrieval_loses`). Why: text
   that retrieval rarely matches (measured: Spec-Bench humanities and qa, fp32, Zen 5 EPYC) verified
   retrieved chains at 0.94-0.98x of plain decoding, where a 2-token forward costs 1.5-1.8x a 1-token one. Measured on a 2-core AMD
   EPYC without bf16 instructions (fp32, 1 thread): a tree of 8 costs 1.8x a plain step there and the
   head's draft 30-50 ms more; on 20 Spec-Bench turns there the default ran 1.01x of plain decoding
   without this step and 1.13x with it (a partial run, not committed: benchmarks/results/grid-epyc-avx2).

Memory across calls: what steps 2 and 5 learned is kept per (target, head, settings, cost table)
while the target lives (`learned_state`), so a new `generate()` call starts from it instead of the
priors (a short answer is otherwise spent warming up); a new kind of text moves the EMAs within a few
rounds. Step 7's verdicts are not carried over: each call's guard waits for `guard_rounds` rounds of its
own (`RoundRates.new_call`; only the measured plain-step cost is kept), since a verdict on one text is
wrong on the next often enough to cost whole turns (after a copy-heavy turn, the head stayed off).

Parameters (`PolicyParams`): decay 0.9, c_min 0.05, c_max 2.0, r_min 0.05, retrieval_prior 0.5, retrieval_weight 1,
patience 3, probe_every 8, guard_rounds 4, max_probe_gap 8; the cost EMAs of steps 5 and 7 use `cost_decay` 0.8.

Lossless: pruning keeps an ancestor-closed subset of a tree whose siblings are distinct, chosen from
the draft and past rounds only, so `verification.accept` (greedy identity, the sampling law) is
unchanged. Stats: `GenerationStats.tree_sizes` holds T, `predicted_ms` the predicted round time
(corrected t_draft + t_verify(T + 1) + o) next to the measured `draft_seconds + verify_seconds`.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass

import torch

from .cost_model import MAX_K
from .retrieval import RETRIEVAL_SOURCE
from .round_costs import (DRAFTED, SHADOW, TREE, UNDRAFTED, CostCorrection, RoundRates, drafting_loses,  # noqa: F401
                          retrieval_loses, shadow_estimates, shadow_tokens)


@dataclass(frozen=True)
class PolicyParams:
    """Parameters of the adaptive rule (see the module docstring)."""

    decay: float = 0.9  # EMA weight of the past
    c_min: float = 0.05  # head calibration clip
    c_max: float = 2.0
    r_min: float = 0.05  # lowest retrieval rate (keeps retrieval nodes priced above zero)
    retrieval_prior: float = 0.5
    retrieval_weight: float = 1.0  # pseudo-nodes behind the retrieval prior (and behind each match class's back-off)
    patience: int = 3  # drafted rounds choosing T = 0 before the head stops drafting
    probe_every: int = 8  # while not drafting, draft once every this many rounds
    cost_decay: float = 0.8  # EMA weight of the past for the measured-cost corrections (rule step 5)
    guard_rounds: int = 4  # drafted rounds measured before the realised-rate guard may stop drafting (rule step 7)
    max_probe_gap: int = 8  # while skipping, the probe gap doubles up to this many x probe_every (rule steps 6-7)

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0 or not 0.0 <= self.cost_decay < 1.0 or not 0.0 < self.c_min <= self.c_max or not 0.0 < self.r_min <= 1.0 or self.retrieval_weight <= 0.0:
            raise ValueError(f"PolicyParams needs 0 <= decay, cost_decay < 1, 0 < c_min <= c_max, 0 < r_min <= 1 and "
                             f"retrieval_weight > 0: {self}")
        if self.patience < 1 or self.probe_every < 1 or self.guard_rounds < 1 or self.max_probe_gap < 1:
            raise ValueError(f"PolicyParams needs patience, probe_every, guard_rounds and max_probe_gap >= 1: {self}")


# ---------------------------------------------------------------------------- pure functions
def choose_size(p_sorted: torch.Tensor, verify_curve: torch.Tensor, draft_ms: float,
                allowed: torch.BoolTensor | None = None) -> torch.Tensor:
    """T (0-dim long tensor) maximising `(1 + sum_{i<=T} p_i) / (draft_ms + verify_curve[T])`.

    p_sorted: `[N]` acceptance estimates, descending; verify_curve: `[K]` ms of a forward over k = 1..K
    tokens (entry k - 1); allowed: `[K]` bool, the k whose cost was measured (`CostTable.measured`;
    None: all). T ranges over 0..min(N, K - 1) with T + 1 allowed; ties go to the smaller T.
    """
    n = min(p_sorted.shape[0], verify_curve.shape[0] - 1)
    p = p_sorted[:n].double()
    gain = 1.0 + torch.cat([p.new_zeros(1), p.cumsum(0)])
    cost = draft_ms + verify_curve[: n + 1].to(device=p.device, dtype=torch.float64)
    rate = gain / cost
    if allowed is not None:  # k = 1 is always measured (every grid starts at 1): T = 0 stays possible
        rate = torch.where(allowed[: n + 1].to(rate.device), rate, -torch.inf)
    return rate.argmax()  # the first maximum


def acceptance(tree, head_ratio: torch.Tensor, retrieval_rate: torch.Tensor):
    """(p, raw, is_retrieval) per node of a non-empty tree: calibrated, ancestor-capped estimates (rule step 1),
    the uncalibrated exp(score) of head nodes (0 for retrieval nodes), and which nodes are retrieval-only.

    retrieval_rate: `[D + 1]` per depth, or `[M, D + 1]` per (match class, depth) (`Calibration.retrieval_rate`;
    a node's class is its `MergedTree.match`, clamped to M - 1; 0 = pooled).
    """
    depth = tree.depth.clamp(max=head_ratio.shape[0] - 1)
    source = getattr(tree, "source", None)
    scores = tree.scores if tree.scores is not None else torch.full(depth.shape, float("nan"), device=depth.device)
    is_ret = scores.isnan() if source is None else (source == RETRIEVAL_SOURCE)
    raw = torch.where(is_ret, 0.0, scores.double().nan_to_num(nan=-torch.inf).exp())
    rates = retrieval_rate if retrieval_rate.dim() == 2 else retrieval_rate[None]  # [M, D + 1]
    match = getattr(tree, "match", None)
    cls = torch.zeros_like(depth) if match is None else match.clamp(0, rates.shape[0] - 1)
    p = torch.where(is_ret, rates[cls, depth], head_ratio[depth] * raw).clamp(max=1.0)
    p = torch.where(tree.ancestors[1:, 1:], p[None, :], 1.0).amin(dim=1)  # min over ancestors (itself included)
    return p, raw, is_ret


def prune(tree, kept: torch.LongTensor):
    """The sub-tree of the nodes `kept` (sorted slots - 1, ancestor-closed), same class, slots renumbered."""
    n = tree.num_nodes
    slots = torch.cat([kept.new_zeros(1), kept + 1])  # root first
    new_slot = torch.zeros(n + 1, dtype=torch.long, device=kept.device)
    new_slot[slots] = torch.arange(slots.shape[0], device=kept.device)
    values = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    for name in ("tokens", "parents", "depth", "scores", "source", "match", "retrieved"):
        if values.get(name) is not None:
            values[name] = values[name][kept]
    values["parents"] = new_slot[values["parents"]]
    values["ancestors"] = tree.ancestors[slots][:, slots]
    return type(tree)(**values)


# ---------------------------------------------------------------------------- online calibration
class Calibration:
    """Per-depth EMAs of observed vs predicted acceptance (rule step 2); all tensors, no host sync.

    Retrieval rates are kept per (match class, depth): class n >= 1 holds the retrieval nodes whose path
    followed an n-gram match (`MergedTree.match`, n clamped to `match_classes - 1`), class 0 all retrieval
    nodes pooled. A class seen little at a depth is pulled toward the pooled rate of that depth.
    """

    def __init__(self, depths: int, params: PolicyParams, device=None, match_classes: int = 1):
        ones = torch.ones(depths + 1, dtype=torch.float64, device=device)  # index = depth (0 unused)
        self.params = params
        self.head_acc, self.head_pred = ones.clone(), ones.clone()
        # flat prior: a depth is learned only once verified, so a prior falling with depth (prior ** d) would
        # never try the long retrieved chains that copy-heavy text accepts whole (tried: their rates stayed
        # at the prior). The price is the first call's first rounds, which verify chains too eagerly.
        grid = torch.zeros(max(1, match_classes), depths + 1, dtype=torch.float64, device=device)  # [M, D + 1]
        self.ret_acc, self.ret_off = grid, grid.clone()  # discounted counts: accepted / verified retrieval nodes

    def head_ratio(self) -> torch.Tensor:
        return (self.head_acc / self.head_pred).clamp(self.params.c_min, self.params.c_max)

    def retrieval_rate(self) -> torch.Tensor:
        """`[M, D + 1]` retrieval acceptance rate per (match class, depth); row 0 is the pooled rate.

        Pooled: r_d = (A_d + w prior) / (O_d + w); class n: r_{n,d} = (A_{n,d} + w r_d) / (O_{n,d} + w), with
        w = `retrieval_weight` pseudo-nodes: a class seen little stays near its depth's pooled rate.
        """
        w = self.params.retrieval_weight
        pooled = (self.ret_acc[0] + w * self.params.retrieval_prior) / (self.ret_off[0] + w)  # [D + 1]
        cell = (self.ret_acc + w * pooled) / (self.ret_off + w)
        return torch.cat([pooled[None], cell[1:]]).clamp(self.params.r_min, 1.0)

    def update(self, depth: torch.LongTensor, raw: torch.Tensor, is_ret: torch.BoolTensor, path: torch.LongTensor,
               match: torch.LongTensor | None = None):
        """One verified round: node depths, raw head probabilities, retrieval flags, accepted slots (root first),
        and the retrieval nodes' match lengths (None: all pooled)."""
        size = self.head_acc.shape[0]
        d = depth.clamp(max=size - 1)
        zeros = torch.zeros(size, dtype=torch.float64, device=d.device)
        head = (~is_ret).double()
        pred = zeros.index_add(0, d, raw * head)
        offered_head = zeros.index_add(0, d, head)
        nodes = path[1:] - 1
        on_path_ret = is_ret[nodes].double()
        acc_head = zeros.index_add(0, d[nodes], 1.0 - on_path_ret)
        decay = self.params.decay

        def ema(state, value, seen):
            state.copy_(torch.where(seen > 0, decay * state + (1.0 - decay) * value, state))

        ema(self.head_acc, acc_head, offered_head)
        ema(self.head_pred, pred, offered_head)
        # retrieval: pooled row 0 and the node's match-class row, as one flat [M * (D + 1)] index
        classes = self.ret_acc.shape[0]
        cls = (match if match is not None else torch.zeros_like(d)).clamp(0, classes - 1)
        flat = torch.cat([d, cls * size + d])  # every node twice: pooled, then its class (class 0: pooled again)
        twice = torch.cat([is_ret, is_ret & (cls > 0)]).double()
        on_path = torch.cat([nodes, nodes + d.shape[0]])
        grid = torch.zeros(classes * size, dtype=torch.float64, device=d.device)
        offered = grid.index_add(0, flat, twice).view(classes, size)
        taken = grid.index_add(0, flat[on_path], twice[on_path]).view(classes, size)
        # discounted counts (a sum, not a mean: 4 nodes verified weigh 4 against the prior's w)
        self.ret_acc.mul_(torch.where(offered > 0, decay, 1.0)).add_(taken)
        self.ret_off.mul_(torch.where(offered > 0, decay, 1.0)).add_(offered)


_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> {key: learned state}


def learned_state(target, head, cost_model, settings=None) -> dict:
    """The policy's learned state for this target, head, tree settings and cost table ({} before the first call).

    Kept while `target` lives; keyed by the head's identity (a head created later at the same address
    inherits it: harmless, only the starting point of the EMAs changes), the settings (with and without
    retrieval learn different rates) and the cost table files.
    """
    per_target = _MEMORY.setdefault(target, {})
    tables = tuple(sorted((k, str(v)) for k, v in getattr(cost_model, "paths", {}).items()))
    return per_target.setdefault((None if head is None else id(head), settings, tables), {})


# ---------------------------------------------------------------------------- the drafter wrapper
class AdaptiveDrafter:
    """Drafter of the generation loop with `tree_policy="adaptive"`: the inner drafter's tree, pruned by the rule.

    inner: the round's drafter (`TreeDrafter`, `RetrievalDrafter` wrapping one or none); the head's
    `TreeDrafter` (found as `inner` or `inner.inner`) is steered through its `skip`, `depth_limit` and
    `max_nodes` and reports `levels` and `frontier_logp`. cost_model: a `CostModel` (verify table; a
    draft table when a head drafts). Each round's predicted time goes to `predicted_ms` and, given `stats`
    (a `GenerationStats`), to `stats.predicted_ms`.
    """

    def __init__(self, inner, settings, cost_model, params: PolicyParams | None = None, stats=None,
                 memory: dict | None = None):
        self.inner, self.settings, self.cost, self.stats = inner, settings, cost_model, stats
        self.measured = cost_model.verify.measured()  # [64] bool: the tree sizes (k = T + 1) whose cost was measured
        self.memory = {} if memory is None else memory  # learned state shared with later calls (learned_state)
        self.params = params if params is not None else PolicyParams()
        head = inner if hasattr(inner, "frontier_logp") else getattr(inner, "inner", None)
        self.head = head if hasattr(head, "frontier_logp") else None
        if self.head is not None:
            self.head.max_nodes = MAX_K - 1  # every candidate the cost model can price
        self.depths = max(settings.depth, settings.retrieval_length) + 1  # depth + 1: the frontier gain of the last level
        index = getattr(inner, "index", None)  # a RetrievalDrafter's SuffixIndex: match lengths up to max_n
        self.match_classes = index.max_n + 1 if index is not None else 1
        self.calibration: Calibration | None = self.memory.get("calibration")
        if self.calibration is not None and (self.calibration.head_acc.shape[0] != self.depths + 1
                                             or self.calibration.ret_acc.shape[0] != self.match_classes):
            self.calibration = None  # another tree depth or match range: start again from the priors
        # rule step 4's depth carries over (it can grow by one level a round): where levels do not pay (fp32 on a
        # CPU), a new call's first drafted rounds, which the per-call guard needs, cost one level, not the tree's
        self.depth_next = min(settings.depth, self.memory.get("depth", settings.depth))
        self.idle = 0  # consecutive drafted rounds that chose T = 0
        self.skipping = False
        self.since_probe = 0
        self.probe_gap = self.params.probe_every  # rounds between two head probes while skipping (rule steps 6-7)
        self.predicted_ms: float | None = None
        self.correction = self.memory.setdefault("correction", CostCorrection(self.params.cost_decay))
        self.rates = self.memory.setdefault("rates", RoundRates(self.params.cost_decay))
        self.rates.new_call()  # the guard judges this call's text on its own rounds (RoundRates.new_call)
        self.since_plain = 0  # drafted rounds since the last round without the head (rule step 7's plain probes)
        # rule step 7's retrieval shadow: with a head and retrieval, each drafted round is also priced as if
        # retrieval alone had drafted it (no plain probes needed then)
        self.retrieval = index is not None
        self.shadowing = self.head is not None and self.retrieval
        # rule step 7 without the head: retrieved trees that lose to plain steps are not verified (probes aside)
        self.ret_skipping = False
        self.ret_since_probe = 0
        self.ret_probe_gap = self.params.probe_every
        self._kind = None  # the last round's kind for `rates` (DRAFTED, TREE or UNDRAFTED)
        self._shadow_set = None  # [T'] bool per kept node: in the tree retrieval alone would have verified
        self._shadow_tokens = None  # 0-dim: tokens that tree would have emitted last round (read next round)
        self._shadow_size = None  # (T_r, context) of last round: retrieval alone's tree size, priced next round
        self._last = None  # (depth, raw, is_retrieval, match) of the verified nodes, for `feedback`
        self._priced = None  # (table draft ms, table verify ms, start time) of the last round, for step 5

    def observe(self, features: torch.Tensor) -> None:
        self.inner.observe(features)

    def _learn_costs(self, now: float) -> int | None:
        """Rule step 5: compare the last round's predictions with its measured times (from `stats`); rule step 7's
        round rates. Returns the tokens last round emitted if the head drafted it and it was measured, else None."""
        st = self.stats
        if not getattr(self.cost, "corrected", True) or self._priced is None or st is None or not st.draft_seconds or self._priced[3] != len(st.draft_seconds) - 1:
            return None
        table_draft, table_verify, start, _ = self._priced
        draft_ms, verify_ms = 1000.0 * st.draft_seconds[-1], 1000.0 * st.verify_seconds[-1]
        self.correction.update(table_draft, table_verify, draft_ms, verify_ms, 1000.0 * (now - start))
        if self._kind is not None and st.new_tokens_per_round:
            self.rates.update(self._kind, st.new_tokens_per_round[-1], 1000.0 * (now - start))
            return st.new_tokens_per_round[-1] if self._kind == DRAFTED else None
        return None

    def _retrieval_guard(self, context: float) -> bool:
        """Rule step 7 without the head: update `ret_skipping` (and the probe gap); True if this round may verify
        a retrieved tree without the head."""
        p_, fix = self.params, self.correction
        if not self.retrieval or not getattr(self.cost, "corrected", True):
            return True
        plain_ms = fix.verify_ms(self.cost.verify_ms(1, context)) + fix.other_ms
        if not retrieval_loses(self.rates, p_.guard_rounds, plain_ms):
            self.ret_skipping, self.ret_probe_gap = False, p_.probe_every
        else:
            if self.ret_skipping and self._kind == TREE:  # a probe after which retrieval still loses
                self.ret_probe_gap = min(2 * self.ret_probe_gap, p_.max_probe_gap * p_.probe_every)
            self.ret_skipping = True
        return not self.ret_skipping or self.ret_since_probe + 1 >= self.ret_probe_gap

    def _learn_shadow(self, emitted: int | None, shadow_tokens: int) -> None:
        """Rule step 7: the retrieval shadow of last round (drafted, and measured: `emitted` tokens), priced by the
        corrected table at retrieval alone's tree size plus the measured other time per round."""
        if emitted is None or self._shadow_size is None:
            return
        size, context = self._shadow_size
        fix = self.correction
        ms = fix.verify_ms(self.cost.verify_ms(size + 1, context)) + fix.other_ms
        self.rates.update(SHADOW, min(shadow_tokens, emitted), ms)  # emitted < shadow only when EOS / a limit cut it

    def _drafting_loses(self, plain_ms: float) -> bool:
        """Rule step 7 (off for what-if cost models, which measure nothing)."""
        return getattr(self.cost, "corrected", True) and drafting_loses(self.rates, self.params.guard_rounds, plain_ms)

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_depth: int | None = None):
        start = time.perf_counter()
        emitted = self._learn_costs(start)  # tokens of last round if the head drafted it (its shadow is read below)
        p_, fix = self.params, self.correction
        context = input_ids.shape[1] - 1
        if self.calibration is None or self.calibration.head_acc.device != input_ids.device:
            self.calibration = self.memory["calibration"] = Calibration(self.depths, p_, input_ids.device,
                                                                        self.match_classes)
        probing = self.skipping and self.since_probe + 1 >= self.probe_gap
        drafting = self.head is not None and (not self.skipping or probing)
        allow_tree = self._retrieval_guard(context)  # without the head: may this round verify a retrieved tree?
        if drafting and getattr(self.cost, "corrected", True) and not self.shadowing:
            # rule step 7 without retrieval: measure rounds without the head too (plain probes)
            known = self.rates.rounds[UNDRAFTED] >= p_.guard_rounds
            self.since_plain += 1
            drafting = self.since_plain < (4 * p_.probe_every if known else p_.probe_every)
        if not drafting:
            self.since_plain = 0
        if self.head is not None:
            self.since_probe = 0 if drafting else self.since_probe + 1
            self.head.skip, self.head.depth_limit = not drafting, self.depth_next
        tree = self.inner.draft(input_ids, max_depth=max_depth)

        table = self.cost.verify_curve(context)  # CPU float64 [64]
        curve = fix.verify_curve(table)
        levels = self.head.levels if drafting else 0
        table_level_ms = self.cost.draft_level_ms(min(self.settings.top_k, 64), context) if levels else 0.0
        level_ms = fix.draft_scale() * table_level_ms
        draft_ms = levels * level_ms
        ratio, rate = self.calibration.head_ratio(), self.calibration.retrieval_rate()
        wanted = {}  # name -> 0-dim long tensor, read together: the round's one host sync
        if tree.num_nodes:
            p, raw, is_ret = acceptance(tree, ratio, rate)
            order = torch.argsort(p, descending=True, stable=True)
            wanted["size"] = choose_size(p[order], curve, draft_ms + fix.other_ms, self.measured)
        shadow = levels and self.shadowing and tree.num_nodes and getattr(tree, "retrieved", None) is not None
        if shadow:  # rule step 7: the tree retrieval alone would have verified (no draft cost)
            p_r = shadow_estimates(tree, rate)
            order_r = torch.argsort(p_r, descending=True, stable=True)
            wanted["shadow size"] = choose_size(p_r[order_r], curve, fix.other_ms, self.measured)
            rank = torch.empty_like(order_r)
            rank[order_r] = torch.arange(order_r.shape[0], device=order_r.device)
            in_shadow = rank < wanted["shadow size"]  # [T]: the shadow's T_r best nodes (ancestor-closed)
        if levels:  # rule step 4: how deep the next round drafts
            frontier = self.head.frontier_logp  # [levels, K]
            gains = (ratio[2 : levels + 2, None] * frontier.double().exp()).clamp(max=1.0).sum(dim=1)
            plain_ms = fix.verify_ms(self.cost.verify_ms(1, context))  # == curve[0], without reading a tensor
            pays = (gains >= level_ms / (plain_ms + fix.other_ms)).long()
            wanted["depth"] = 1 + pays.cumprod(0).sum()
        if self._shadow_tokens is not None:
            wanted["last shadow"] = self._shadow_tokens
        values = dict(zip(wanted, torch.stack(list(wanted.values())).tolist())) if wanted else {}
        if "last shadow" in values:
            self._learn_shadow(emitted, int(values["last shadow"]))
        self._shadow_tokens = None
        self._shadow_size = (int(values["shadow size"]), context) if shadow else None
        size = int(values.get("size", 0))
        if not levels and self.retrieval:
            if not allow_tree:
                size = 0  # retrieved trees lose to plain steps here: a plain step
            self.ret_since_probe = 0 if allow_tree else self.ret_since_probe + 1
        if levels:
            self.depth_next = max(1, min(self.settings.depth, int(values["depth"])))
            if max_depth is None or max_depth >= self.head.depth_limit:  # not cut short by the tokens left
                self.memory["depth"] = self.depth_next
            self.idle = self.idle + 1 if size == 0 else 0
            guarded = self._drafting_loses(plain_ms + fix.other_ms)
            self.skipping = self.idle >= p_.patience or guarded
            if not self.skipping:
                self.probe_gap = p_.probe_every
            elif probing:  # still skipping after a probe (idle or guarded): probe half as often
                self.probe_gap = min(2 * self.probe_gap, p_.max_probe_gap * p_.probe_every)
        self._kind = DRAFTED if levels else (TREE if size and self.retrieval else UNDRAFTED)
        if self.head is None and not self.retrieval:
            self._kind = None  # nothing to compare (a test oracle drafter)
        table_ms = self.cost.verify_ms(size + 1, context)  # == table[size]: host floats, no tensor read
        self.predicted_ms = draft_ms + fix.verify_ms(table_ms)
        round_index = len(self.stats.draft_seconds) if self.stats is not None else 0
        self._priced = (levels * table_level_ms, table_ms, start, round_index)
        if self.stats is not None:
            self.stats.predicted_ms.append(self.predicted_ms)
        self._shadow_set = None
        if not tree.num_nodes:
            self._last = None
            return tree
        kept = order[:size].sort().values
        if shadow:
            self._shadow_set = in_shadow[kept]
        match = getattr(tree, "match", None)
        self._last = (tree.depth[kept], raw[kept], is_ret[kept], None if match is None else match[kept])
        return prune(tree, kept)

    def feedback(self, tree, path: torch.LongTensor) -> None:
        """Learn from the verified round (`path`: accepted slots of `tree`, root first)."""
        if self._last is not None and tree.num_nodes:
            depth, raw, is_ret, match = self._last
            self.calibration.update(depth, raw, is_ret, path, match)
        if self._shadow_set is not None:  # a drafted round: what retrieval alone would have emitted
            self._shadow_tokens = shadow_tokens(self._shadow_set, path)


__all__ = ["AdaptiveDrafter", "Calibration", "CostCorrection", "RoundRates", "drafting_loses", "learned_state",
           "PolicyParams", "acceptance", "choose_size", "prune"]
