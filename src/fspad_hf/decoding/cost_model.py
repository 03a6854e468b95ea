"""`CostModel`: measured costs (ms) of a target forward over k tree tokens and of one draft level, on this machine.

What is measured (never assumed; the numbers differ by CPU, dtype and thread count far more than any
fixed tree can absorb, see issue 12):

- verify: one target forward over `k` new tokens (k = 1..64; k = 1 is a plain decoding step, k = T + 1
  a tree of T draft nodes plus its root) on top of a `context`-token cache, exactly as tree decoding
  runs it: the base decoder with an additive tree mask and explicit positions, then float32 logits for
  every row (`generation.target_forward`).
- draft level: one draft step of a head over `width` frontier nodes (fusion, draft layer with a tree
  mask, the draft LM head, log-softmax and the two top-k of an EAGLE-2 level, as `TreeDrafter.draft`
  does), on top of a `context`-entry head cache. A round's context pass (`_consume`) over the c = 1 +
  accepted new entries costs about one level of width c.

Calibration: a grid of k (default every k up to 16, then 20, 24, 32, 40, 48, 64; at most half the model's
positions) at a few contexts (default 128, 512, 1024, cropped to fit). Each repetition runs every
point once, interleaved, in alternating order, so background load hits all points alike; the table
holds the median per point, the samples and the load average. Context caches hold random keys/values
of the right shapes instead of a prefill (attention costs depend on shapes only). A soft budget
(`max_seconds`: 30 s per target table, 10 s per draft table) stops new repetitions once exceeded (at
least `min_reps` = 2 unless the first overran it); warm-up is one untimed pass at the smallest context.

Interpolation: piecewise linear in k (exact at grid points), linear in context (the smallest below
it, the last segment extrapolated above, slope >= 0). Tables are not forced monotone in k: on some
CPUs a 2-token forward really costs more than a 4-token one (MKL switches kernels), and a k between two
grid points can cost far more than either, so `CostTable.measured()` marks the k the adaptive policy
may choose: the grid points (and, for a grid cut short by a small model's positions, the sizes past it).

Cache: `<root>/costs/<key>.json`, root = `$FSPAD_HF_CACHE`, else `$XDG_CACHE_HOME/fspad_hf`, else
`~/.cache/fspad_hf`. The key covers device, CPU model and features, dtype, torch threads, torch and
transformers versions, and the target's (for draft tables also the head's) cost-relevant config. A
table older than `max_age_days` or with a different key is recalibrated (`CostModel.for_target`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..head.target_parts import text_config_of
from ..masks import additive_mask
from .cost_key import head_fingerprint, key_name, machine_key, target_fingerprint  # noqa: F401 (public here too)
from .cache import truncate_cache

logger = logging.getLogger(__name__)

MAX_K = 64  # largest tree forward (tokens) and draft width the model answers for
# Every k up to 16: on some CPUs the cost is not smooth in k (kernels chosen by shape; the committed table of a
# 2-core AMD EPYC, fp32, 2 threads, ctx 1024, benchmarks/results/grid-epyc-avx512bf16/smollm2-float32-2t/
# calibrate.log: k = 11 148 ms between k = 8 104 and k = 12 114), so a size between grid points is not priced
# by interpolation: the policy picks measured sizes only (`measured`).
DEFAULT_KS = tuple(range(1, 17)) + (20, 24, 32, 40, 48, 64)
DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CONTEXTS = (128, 512, 1024)
FORMAT = 1


def _now() -> float:
    """Wall-clock time of table creation and staleness checks (a function so tests can move time)."""
    return time.time()


def cache_root() -> Path:
    """`$FSPAD_HF_CACHE/costs`, else `$XDG_CACHE_HOME/fspad_hf/costs`, else `~/.cache/fspad_hf/costs`."""
    root = os.environ.get("FSPAD_HF_CACHE")
    if root:
        return Path(root).expanduser() / "costs"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fspad_hf" / "costs"


# ---------------------------------------------------------------------------- tables
def _check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int in 1..{MAX_K}, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"{name} must be in 1..{MAX_K}, got {k}")
    return k


def _check_context(context) -> float:
    if isinstance(context, bool) or not isinstance(context, (int, float)) or math.isnan(context) or context < 0:
        raise ValueError(f"context must be a number of tokens >= 0, got {context!r}")
    return float(context)


def _dense(grid: list[int], values: list[float]) -> list[float]:
    """Piecewise-linear values at 1..MAX_K from values at the (sorted) grid points; constant past the ends."""
    out = []
    for k in range(1, MAX_K + 1):
        if k <= grid[0]:
            out.append(values[0])
        elif k >= grid[-1]:
            out.append(values[-1])
        else:
            i = next(j for j in range(1, len(grid)) if grid[j] >= k)
            w = (k - grid[i - 1]) / (grid[i] - grid[i - 1])
            out.append(values[i - 1] + w * (values[i] - values[i - 1]))
    return out


@dataclass
class CostTable:
    """Median ms per (context, grid point): `ms[i][j]` = cost at `contexts[i]` and `grid[j]` (k or width)."""

    kind: str  # "verify" or "draft"
    grid: list[int]
    contexts: list[int]
    ms: list[list[float]]
    key: dict
    created: float
    reps: int
    seconds: float  # wall time the calibration took
    samples: list[list[list[float]]] = field(default_factory=list)  # [context][grid point][repetition]
    load: dict | None = None  # {"loadavg_1m", "cores"} when calibrated (informational, not part of the key)

    def __post_init__(self):
        self.grid, self.contexts = [int(g) for g in self.grid], [int(c) for c in self.contexts]
        if not self.grid or self.grid != sorted(set(self.grid)) or self.grid[0] != 1 or self.grid[-1] > MAX_K:
            raise ValueError(f"{self.kind} grid must be increasing, start at 1 and end <= {MAX_K}: {self.grid}")
        if not self.contexts or self.contexts != sorted(set(self.contexts)):
            raise ValueError(f"{self.kind} contexts must be increasing and distinct: {self.contexts}")
        if len(self.ms) != len(self.contexts) or any(len(row) != len(self.grid) for row in self.ms):
            raise ValueError(f"{self.kind} table shape does not match its grid and contexts")
        if not all(v > 0 and v != float("inf") for row in self.ms for v in row):
            raise ValueError(f"{self.kind} table has non-positive or non-finite entries")
        self._rows = [_dense(self.grid, row) for row in self.ms]  # [context][k - 1]
        self._tensor = torch.tensor(self._rows, dtype=torch.float64)

    def _blend(self, context: float) -> tuple[int, int, float]:
        """(row a, row b, weight of b) for a context: linear between grid contexts, extrapolated above."""
        cs = self.contexts
        if len(cs) == 1 or context <= cs[0]:
            return 0, 0, 0.0
        i = next((j for j in range(1, len(cs)) if cs[j] >= context), len(cs) - 1)
        return i - 1, i, (context - cs[i - 1]) / (cs[i] - cs[i - 1])

    def value(self, k: int, context: float) -> float:
        a, b, w = self._blend(context)
        lo, hi = self._rows[a][k - 1], self._rows[b][k - 1]
        if w > 1.0:  # above the largest context: extrapolate, never decreasing with context
            return hi + (w - 1.0) * max(0.0, hi - lo)
        return lo + w * (hi - lo)

    def curve(self, context: float) -> torch.Tensor:
        a, b, w = self._blend(context)
        lo, hi = self._tensor[a], self._tensor[b]
        if w > 1.0:
            return hi + (w - 1.0) * (hi - lo).clamp(min=0.0)
        return lo + w * (hi - lo)

    def measured(self) -> torch.BoolTensor:
        """`[64]` bool: entry k - 1 is True where k was measured (a grid point) or lies past the grid's end
        (a grid cut at half a small model's positions); False where the cost is only interpolated."""
        k = torch.arange(1, MAX_K + 1)
        return torch.isin(k, torch.tensor(self.grid)) | (k > self.grid[-1])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["format"] = FORMAT
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CostTable:
        if data.get("format") != FORMAT:
            raise ValueError(f"cost table format {data.get('format')!r}, expected {FORMAT}")
        names = ("kind", "grid", "contexts", "ms", "key", "created", "reps", "seconds", "samples", "load")
        return cls(**{n: data[n] for n in names if n in data})

    def to_markdown(self) -> str:
        label = "k" if self.kind == "verify" else "width"
        head = f"| {label} | " + " | ".join(f"ctx {c}" for c in self.contexts) + " |"
        rule = "|---|" + "---|" * len(self.contexts)
        rows = [f"| {g} | " + " | ".join(f"{self.ms[i][j]:.1f}" for i in range(len(self.contexts))) + " |"
                for j, g in enumerate(self.grid)]
        return "\n".join([head, rule, *rows])


# ---------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fill_cache(cache, length: int, generator: torch.Generator) -> None:
    """Replace every layer's keys/values (already initialised by one real step) by random ones of `length` positions."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            old = getattr(layer, name)
            shape = (*old.shape[:-2], length, old.shape[-1])
            setattr(layer, name, torch.randn(shape, generator=generator).to(device=old.device, dtype=old.dtype))


def _contexts_for(limit: int | None, contexts, largest: int) -> list[int]:
    out = sorted({min(int(c), limit - largest) if limit else int(c) for c in contexts})
    if not out or out[0] < 1:
        raise ValueError(f"contexts {list(contexts)} do not fit the model's {limit} positions with {largest} new tokens")
    return out


def _fit(limit: int | None, contexts, grid: list[int]) -> tuple[list[int], list[int]]:
    """Grid points up to half the model's positions (costs stay constant past the grid), contexts that fit."""
    grid = [g for g in grid if not limit or g <= max(1, limit // 2)]
    return grid, _contexts_for(limit, contexts, grid[-1])


def _run_grid(points: list[tuple[int, int]], run, device, reps: int, min_reps: int, warmup: int,
              max_seconds: float | None) -> tuple[dict, int]:
    """Time `run(i_context, g)` for every point, interleaved, alternating order; -> ({point: [ms]}, reps done)."""
    if reps < 1 or min_reps < 1:
        raise ValueError(f"reps and min_reps must be >= 1, got {reps} and {min_reps}")
    first = points[0][0]
    for _ in range(warmup):  # every grid point once at the first context (first calls allocate, pick kernels)
        for point in points:
            if point[0] == first:
                run(*point)
    times: dict = {p: [] for p in points}
    start, done = time.perf_counter(), 0
    while done < reps:
        order = points if done % 2 == 0 else points[::-1]
        for point in order:
            _sync(device)
            t = time.perf_counter()
            run(*point)
            _sync(device)
            times[point].append((time.perf_counter() - t) * 1000.0)
        done += 1
        spent = time.perf_counter() - start
        if max_seconds is not None and (spent > max_seconds or done >= min_reps and spent * (done + 1) / done > max_seconds):
            break  # the budget is spent (a single over-long repetition ends it: the machine is overloaded)
    return times, done


def _table(kind, grid, contexts, times, key, reps_done, seconds) -> CostTable:
    samples = [[times[(i, g)] for g in grid] for i in range(len(contexts))]
    ms = [[statistics.median(s) for s in row] for row in samples]
    load = {"loadavg_1m": os.getloadavg()[0], "cores": os.cpu_count()} if hasattr(os, "getloadavg") else None
    return CostTable(kind, list(grid), list(contexts), ms, key, _now(), reps_done, seconds, samples, load)


@torch.inference_mode()
def measure_verify(target, ks=DEFAULT_KS, contexts=DEFAULT_CONTEXTS, reps: int = 3, warmup: int = 1,
                   min_reps: int = 2, max_seconds: float | None = 30.0, seed: int = 0) -> CostTable:
    """Measure target forwards over k tokens (a chain-shaped tree mask) at each context; one table."""
    from transformers.cache_utils import DynamicCache

    from .generation import target_forward, tree_mask
    from .tree import DraftTree, ancestor_mask

    t0 = time.perf_counter()
    grid = sorted({_check_k(int(k)) for k in ks} | {1})
    cfg = text_config_of(target)
    grid, contexts = _fit(getattr(cfg, "max_position_embeddings", None), contexts, grid)
    device, dtype = next(target.parameters()).device, next(target.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    vocab = cfg.vocab_size

    caches = []
    for c in contexts:
        cache = DynamicCache()
        target_forward(target, torch.randint(0, vocab, (1, 1), generator=gen).to(device), cache, last_row_only=True)
        _fill_cache(cache, c, gen)
        caches.append(cache)
    inputs = {}
    for i, c in enumerate(contexts):
        for k in grid:
            parents = torch.arange(k - 1, device=device)  # a chain: node j's parent is slot j - 1
            depth = torch.arange(1, k, device=device)
            tree = DraftTree(tokens=torch.randint(0, vocab, (k - 1,), generator=gen).to(device), parents=parents,
                             depth=depth, ancestors=ancestor_mask(parents, k - 1))
            positions = c + torch.cat([depth.new_zeros(1), depth])
            ids = torch.randint(0, vocab, (1, k), generator=gen).to(device)
            inputs[(i, k)] = (ids, tree_mask(cfg, tree, c, positions, dtype), positions[None])

    def run(i, k):
        ids, mask, pos = inputs[(i, k)]
        target_forward(target, ids, caches[i], mask, pos)
        truncate_cache(caches[i], contexts[i])

    points = [(i, k) for i in range(len(contexts)) for k in grid]
    times, done = _run_grid(points, run, device, reps, min_reps, warmup, max_seconds)
    table = _table("verify", grid, contexts, times, machine_key(target), done, time.perf_counter() - t0)
    logger.info("calibrated target forwards (%s, %d threads) in %.1f s, %d reps", dtype, torch.get_num_threads(),
                table.seconds, done)
    return table


@torch.inference_mode()
def measure_draft(head, target, widths=DEFAULT_WIDTHS, contexts=DEFAULT_CONTEXTS, reps: int = 3, warmup: int = 1,
                  min_reps: int = 2, max_seconds: float | None = 10.0, seed: int = 0) -> CostTable:
    """Measure one draft level (step over `width` nodes + draft LM head + top-k) at each head-cache context."""
    from transformers.cache_utils import DynamicCache

    t0 = time.perf_counter()
    grid = sorted({_check_k(int(w), "width") for w in widths} | {1})
    grid, contexts = _fit(getattr(text_config_of(target), "max_position_embeddings", None), contexts, grid)
    param = next(head.parameters())
    device, dtype, hidden = param.device, param.dtype, head.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    draft_vocab = head.config.draft_vocab_size or head.config.vocab_size
    specialist = head.specialist_for_position(2)  # the specialist of the first drafted level

    caches = []
    for c in contexts:
        cache = DynamicCache()
        feat = torch.randn(1, 1, hidden, generator=gen).to(device=device, dtype=dtype)
        fused = head.fuse_context(torch.zeros(1, 1, dtype=torch.long, device=device), feat)
        for j in range(head.num_specialists):
            head.draft_step(j, fused, torch.zeros(1, 1, dtype=torch.long, device=device), None, cache)
        _fill_cache(cache, c, gen)
        caches.append(cache)
    inputs = {}
    for i, c in enumerate(contexts):
        for w in grid:
            tokens = torch.randint(0, draft_vocab, (w,), generator=gen).to(device)
            feat = torch.randn(w, hidden, generator=gen).to(device=device, dtype=dtype)
            allowed = torch.cat([torch.ones(w, c, dtype=torch.bool), torch.eye(w, dtype=torch.bool)], dim=1).to(device)
            inputs[(i, w)] = (tokens, feat, additive_mask(allowed, dtype), torch.full((1, w), c, device=device))

    def run(i, w):
        tokens, feat, mask, pos = inputs[(i, w)]
        fused = head.fuse_draft(head.to_target_ids(tokens)[None], feat[None])
        out = head.draft_step(specialist, fused, pos, mask, caches[i])
        logp, _ = torch.log_softmax(head.draft_logits(out.predict[0, -w:]).float(), dim=-1).topk(min(w, draft_vocab))
        (logp + logp[:, :1]).flatten().topk(min(w, logp.numel()))
        truncate_cache(caches[i], contexts[i])

    points = [(i, w) for i in range(len(contexts)) for w in grid]
    times, done = _run_grid(points, run, device, reps, min_reps, warmup, max_seconds)
    table = _table("draft", grid, contexts, times, machine_key(target, head), done, time.perf_counter() - t0)
    logger.info("calibrated draft levels (%s) in %.1f s, %d reps", dtype, table.seconds, done)
    return table


# ---------------------------------------------------------------------------- the model
class CostModel:
    """Costs in ms on this machine: `verify_ms(k, context)`, `verify_curve(context)`, `draft_level_ms(width)`.

    Build it with `CostModel.for_target(target, head)` (cached on disk, recalibrated when stale or when
    the machine key changed), or from tables / JSON. `corrected`: the adaptive policy corrects these costs
    online from measured round times (policy.py rule step 5); False takes them as exact (what-if costs, tests).
    """

    def __init__(self, verify: CostTable, draft: CostTable | None = None, paths: dict | None = None,
                 corrected: bool = True):
        if verify.kind != "verify" or (draft is not None and draft.kind != "draft"):
            raise ValueError("CostModel needs a 'verify' table and optionally a 'draft' table")
        self.verify, self.draft, self.corrected = verify, draft, corrected
        self.paths = dict(paths or {})  # kind -> cache file it was loaded from / saved to

    def verify_ms(self, k: int, context: float) -> float:
        """ms of one target forward over `k` new tokens (1..64) on a `context`-token cache."""
        return self.verify.value(_check_k(k), _check_context(context))

    def verify_curve(self, context: float) -> torch.Tensor:
        """float64 `[64]`: entry k - 1 = `verify_ms(k, context)`, in one vectorised call."""
        return self.verify.curve(_check_context(context))

    def plain_step_ms(self, context: float) -> float:
        """ms of one plain decoding step (= `verify_ms(1, context)`)."""
        return self.verify_ms(1, context)

    def draft_level_ms(self, width: int, context: float | None = None) -> float:
        """ms of one draft level over `width` nodes (1..64); context defaults to the middle calibrated one."""
        if self.draft is None:
            raise RuntimeError("this CostModel has no draft costs: build it with CostModel.for_target(target, head)")
        _check_k(width, "width")
        ctx = self.draft.contexts[len(self.draft.contexts) // 2] if context is None else _check_context(context)
        return self.draft.value(width, ctx)

    def to_dict(self) -> dict:
        return {"verify": self.verify.to_dict(), "draft": None if self.draft is None else self.draft.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        draft = data.get("draft")
        return cls(CostTable.from_dict(data["verify"]), None if draft is None else CostTable.from_dict(draft))

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path) -> CostModel:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        """Both tables as Markdown (ms, median), with what they were measured on."""
        key = self.verify.key
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.verify.created))
        if self.verify.load is not None:
            when += f", load average {self.verify.load['loadavg_1m']:.1f} on {self.verify.load['cores']} cores"
        lines = [(f"Machine: {key.get('cpu')}, device {key.get('device')}, {key.get('dtype')}, {key.get('threads')} torch thread(s), "
                  f"torch {key.get('torch')}, transformers {key.get('transformers')}."),
                 (f"Target forward over k new tokens (ms, median of {self.verify.reps}; calibrated in "
                  f"{self.verify.seconds:.1f} s on {when}):"),
                 "", self.verify.to_markdown()]
        if self.draft is not None:
            lines += ["", (f"One draft level over `width` nodes (ms, median of {self.draft.reps}; calibrated in "
                           f"{self.draft.seconds:.1f} s):"), "", self.draft.to_markdown()]
        return "\n".join(lines)

    # -- the cache --------------------------------------------------------------------
    @classmethod
    def for_target(cls, target, head=None, max_age_days: float = 7.0, force: bool = False, cache_dir=None,
                   **calibration) -> CostModel:
        """Load fresh cached tables for this machine/target (and head) or calibrate once and save them.

        `calibration` goes to the measuring functions (`ks`, `widths`, `contexts`, `reps`, `max_seconds`,
        ...); a cached table whose grid differs from an explicitly given `ks` / `widths` / `contexts` is
        recalibrated (repetitions and budget are not compared). `force=True` always recalibrates.
        """
        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        limit = getattr(text_config_of(target), "max_position_embeddings", None)
        ks, widths, contexts = (calibration.get(n) for n in ("ks", "widths", "contexts"))
        ks = None if ks is None else sorted({_check_k(int(k)) for k in ks} | {1})
        widths = None if widths is None else sorted({_check_k(int(w), "width") for w in widths} | {1})
        verify_args = {k: v for k, v in calibration.items() if k != "widths"}
        draft_args = {k: v for k, v in calibration.items() if k != "ks"}
        verify, vpath = _cached(
            root, machine_key(target), max_age_days, force, ks,
            None if contexts is None else _contexts_for(limit, contexts, (ks or DEFAULT_KS)[-1]),
            lambda: measure_verify(target, **verify_args))
        draft, dpath = None, None
        if head is not None:
            draft, dpath = _cached(
                root, machine_key(target, head), max_age_days, force, widths,
                None if contexts is None else _contexts_for(limit, contexts, (widths or DEFAULT_WIDTHS)[-1]),
                lambda: measure_draft(head, target, **draft_args))
        return cls(verify, draft, {"verify": vpath, "draft": dpath} if head is not None else {"verify": vpath})


def _matches(table: CostTable, key: dict, max_age_days: float, grid, contexts) -> bool:
    """Same key, not older than `max_age_days`, and the grid / contexts asked for (None: any)."""
    if table.key != key or not 0 <= _now() - table.created <= max_age_days * 86400.0:
        return False
    return (grid is None or grid == table.grid) and (contexts is None or contexts == table.contexts)


def _cached(root: Path, key: dict, max_age_days: float, force: bool, grid, contexts, measure) -> tuple[CostTable, Path]:
    path = root / f"{key_name(key)}.json"
    if not force and path.is_file():
        try:
            table = CostTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if _matches(table, key, max_age_days, grid, contexts):
                logger.info("cost table from %s", path)
                return table, path
            logger.info("cached cost table %s is stale or for another setup: recalibrating", path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable cost table %s (%s)", path, error)
    table = measure()
    table.key = key
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(table.to_dict(), handle, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    logger.info("cost table saved to %s", path)
    return table, path


__all__ = ["CostModel", "CostTable", "DEFAULT_CONTEXTS", "DEFAULT_KS", "DEFAULT_WIDTHS", "MAX_K", "cache_root",
           "head_fingerprint", "machine_key", "measure_draft", "measure_verify", "target_fingerprint"]
