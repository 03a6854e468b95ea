"""`fspad-hf demo`: answer a prompt with a head (streamed), compare with plain generate(), explain the result.

Both runs are timed alike (each goes through a streamer that decodes every token; only the head run
prints). With `dtype="auto"` a short probe of both dtypes picks the one where the head is fastest and
beats plain decoding; if neither gains, the demo says so. Every slowdown is explained from measured
costs (speed-up bound = tau x t(1) / (t(draft) + t(verify)), METHOD.md 6) and every bf16 mismatch is
located (first differing token, the target's top-2 margin there) with the fp32 command that shows
exact identity.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

import torch
from transformers import TextStreamer

from ..machine import cpu_description, default_threads
from .benchmark import divergence_case, prompt_ids

logger = logging.getLogger(__name__)
DTYPES = ("bfloat16", "float32")


class _SilentStreamer(TextStreamer):
    """Decodes exactly like TextStreamer (same per-token cost) but prints nothing."""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        pass


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    tau: float = 1.0
    draft_ms: float = 0.0
    verify_ms: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds else 0.0


def _load(target_name: str, head_path, dtype: str):
    from ..head.modeling import FSPADDraftModel
    from ..head.shipped import shipped_heads
    from ..targets import load_target

    target, tokenizer = load_target(target_name, dtype=dtype)
    if head_path is None:
        shipped = shipped_heads(target)
        fspad = [p for n, p in shipped.items() if n.endswith("-fspad")]
        head_path = fspad[0] if fspad else next(iter(shipped.values()), None)
        if head_path is None:
            raise SystemExit(f"No shipped head for {target_name}; pass --head PATH (train one with `fspad-hf train`).")
    head = FSPADDraftModel.from_pretrained(head_path).to(device=target.device, dtype=getattr(torch, dtype))
    head.bind_target(target, tokenizer)
    return target, tokenizer, head


def _timed(target, tokenizer, ids, streamer, max_new_tokens: int, head=None) -> Run:
    kwargs = {"assistant_model": head} if head is not None else {}
    t0 = time.perf_counter()
    out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer, **kwargs)
    run = Run(out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0)
    if head is not None:
        s = head.last_generation_stats.summary()
        run.tau, run.draft_ms, run.verify_ms = s["tau"], s["draft_ms_per_round"], s["verify_ms_per_round"]
    return run


def _pair(target, tokenizer, head, ids, max_new_tokens: int, show: bool) -> tuple[Run, Run]:
    """(head run, plain run), each through a decoding streamer; only the head run may print."""
    shown = TextStreamer(tokenizer, skip_prompt=True) if show else _SilentStreamer(tokenizer, skip_prompt=True)
    fast = _timed(target, tokenizer, ids, shown, max_new_tokens, head)
    plain = _timed(target, tokenizer, ids, _SilentStreamer(tokenizer, skip_prompt=True), max_new_tokens)
    return fast, plain


def speedup(fast: Run, plain: Run) -> float:
    return fast.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s else 0.0


def explain(fast: Run, plain: Run) -> str:
    """Why the head run is as fast as it is, from the measured per-token and per-round costs."""
    t1 = 1000 * plain.seconds / max(len(plain.tokens), 1)
    round_ms = fast.draft_ms + fast.verify_ms
    bound = fast.tau * t1 / round_ms if round_ms else 0.0
    return (f"one plain token costs {t1:.0f} ms; a tree round costs {fast.draft_ms:.0f} ms drafting + "
            f"{fast.verify_ms:.0f} ms verifying and yields tau = {fast.tau:.2f} tokens, so the best possible "
            f"speed-up here is {fast.tau:.2f} x {t1:.0f} / {round_ms:.0f} = {bound:.2f}x")


def run_demo(target_name: str = "smollm2", head_path=None, prompt: str = "", max_new_tokens: int = 200,
             dtype: str = "auto", threads: int | None = None, probe_tokens: int = 48, echo=print) -> dict:
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    echo(f"machine: {cpu_description()}; {threads} torch thread(s) (cores free of other work now)")
    history = [{"role": "user", "content": prompt}]
    chosen, probes = dtype, {}
    if dtype == "auto":
        for candidate in DTYPES:
            target, tokenizer, head = _load(target_name, head_path, candidate)
            ids = prompt_ids(tokenizer, history, target.device)
            target.generate(ids, max_new_tokens=4)  # warm-up
            probes[candidate] = speedup(*_pair(target, tokenizer, head, ids, probe_tokens, show=False))
            del target, head
            gc.collect()
        chosen = max(probes, key=probes.get)
        echo("probe (%d tokens): " % probe_tokens + ", ".join(f"{d} {r:.2f}x" for d, r in probes.items())
             + f" -> using {chosen}")
        if probes[chosen] <= 1.0:
            echo(f"On this machine the head does not beat plain decoding in either dtype with its settings "
                 f"(best {probes[chosen]:.2f}x in {chosen}); running it anyway so you can see why.")
    target, tokenizer, head = _load(target_name, head_path, chosen)
    ids = prompt_ids(tokenizer, history, target.device)
    target.generate(ids, max_new_tokens=4)  # warm-up
    fast, plain = _pair(target, tokenizer, head, ids, max_new_tokens, show=True)
    ratio, identical = speedup(fast, plain), fast.tokens == plain.tokens
    echo(f"\nwith {head.config.method_name} head: {fast.tokens_per_s:.1f} tokens/s (tau {fast.tau:.2f}); "
         f"plain generate(): {plain.tokens_per_s:.1f} tokens/s; speed-up {ratio:.2f}x; "
         f"identical output: {identical} ({chosen}, {threads} thread{'s' if threads > 1 else ''})")
    if ratio < 1.0:
        echo(f"Slower than plain decoding: {explain(fast, plain)}.")
    else:
        echo(f"Why: {explain(fast, plain)}.")
    result = {"dtype": chosen, "threads": threads, "probes": probes, "speedup": ratio, "identical": identical,
              "tau": fast.tau, "head_tokens_per_s": fast.tokens_per_s, "plain_tokens_per_s": plain.tokens_per_s}
    if not identical:
        case = divergence_case(target, tokenizer, history, plain.tokens, fast.tokens, 0, 0)
        result["divergence"] = case
        pos = case["position"]
        if case["top2_gap"] is None:
            echo(f"Outputs differ only in length (one stopped at token {pos}).")
        else:
            base_tok, head_tok = tokenizer.decode([plain.tokens[pos]]), tokenizer.decode([fast.tokens[pos]])
            echo(f"Outputs first differ at token {pos}: plain {base_tok!r} vs head {head_tok!r}; the target's top-2 "
                 f"logit margin there is {case['top2_gap']:.3f} (a {chosen} rounding near-tie: a forward over a tree "
                 "and a one-token forward round differently). Exact identity is a float32 property: "
                 f"fspad-hf demo --target {target_name} --dtype float32")
    return result


__all__ = ["run_demo", "explain", "speedup", "Run"]
