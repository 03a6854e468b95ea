"""Repeated generate() calls with a head do not grow memory, and every per-call cache is released.

Live tensors are counted with the garbage collector (exact, unlike RSS, which the allocator makes
noisy); RSS is checked too, with a loose bound. The per-call objects (the candidate generator with
the head's KV cache, the target's KV cache) are reached by wrapping what `fspad_hf.decoding.generation` calls,
so the library needs no test hook.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref
from dataclasses import fields

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

import fspad_hf.decoding.generation as generation
from fspad_hf import FSPADDraftModel
from fspad_hf.compat import GENERATE_CACHE_FIELD
from tests.conftest import make_target

WARMUP_CALLS = 3
MEASURED_CALLS = 30
MAX_TENSOR_GROWTH = 0  # live tensors after 30 calls vs after warm-up: nothing may accumulate
MAX_RSS_GROWTH_MB = 40  # loose: the allocator keeps freed pages; a real per-call leak of a cache would be exact above


def live_tensors() -> tuple[int, int]:
    """(number of live tensor objects, bytes of their distinct storages) after a full collection."""
    gc.collect()
    count, storages = 0, {}
    with warnings.catch_warnings():  # isinstance() on deprecated torch aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        count += 1
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return count, sum(storages.values())


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def pair():
    target = make_target("llama", seed=80)
    return target, FSPADDraftModel.from_target(target, tree_total_tokens=12, tree_depth=4, tree_top_k=3)


def prompt(i: int) -> torch.LongTensor:
    return torch.randint(0, 96, (1, 4 + i % 23), generator=torch.Generator().manual_seed(i))


def run_calls(target, head, n: int, offset: int = 0, **kwargs) -> None:
    """n generate() calls with the head (every third one sampled), each on a different prompt."""
    for i in range(n):
        target.generate(prompt(offset + i), assistant_model=head, max_new_tokens=12, do_sample=(i % 3 == 0), **kwargs)


@pytest.mark.parametrize("route", ["assistant_model", "return_dict"])
def test_repeated_generate_does_not_grow_memory(pair, route):
    target, head = pair
    kwargs = {"return_dict_in_generate": True, "output_scores": True} if route == "return_dict" else {}
    run_calls(target, head, WARMUP_CALLS, **kwargs)
    tensors_before, bytes_before = live_tensors()
    rss_before = rss_mb()
    run_calls(target, head, MEASURED_CALLS, offset=WARMUP_CALLS, **kwargs)
    tensors_after, bytes_after = live_tensors()
    rss_growth = rss_mb() - rss_before
    print(f"{route}: live tensors {tensors_before} -> {tensors_after}, tensor bytes {bytes_before} -> {bytes_after}, "
          f"RSS +{rss_growth:.1f} MB over {MEASURED_CALLS} calls")
    assert tensors_after - tensors_before <= MAX_TENSOR_GROWTH, (
        f"{tensors_after - tensors_before} tensors ({bytes_after - bytes_before} bytes) accumulated over "
        f"{MEASURED_CALLS} generate() calls"
    )
    assert bytes_after <= bytes_before, f"live tensor bytes grew by {bytes_after - bytes_before} over {MEASURED_CALLS} calls"
    assert rss_growth < MAX_RSS_GROWTH_MB, f"RSS grew by {rss_growth:.1f} MB over {MEASURED_CALLS} calls"


class PerCallObjects:
    """Weak references to the per-call objects of tree decoding, collected by wrapping generation's calls."""

    def __init__(self, monkeypatch):
        self.refs: dict[str, list[weakref.ref]] = {"drafter": [], "head_cache": [], "target_cache": []}
        base_generator, base_compact = generation.TreeDrafter, generation.compact_cache
        record = self.refs

        class RecordingGenerator(base_generator):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                record["drafter"].append(weakref.ref(self))
                record["head_cache"].append(weakref.ref(self.cache))

        def recording_compact(cache, *args, **kwargs):
            if not any(ref() is cache for ref in record["target_cache"]):
                record["target_cache"].append(weakref.ref(cache))
            return base_compact(cache, *args, **kwargs)

        monkeypatch.setattr(generation, "TreeDrafter", RecordingGenerator)
        monkeypatch.setattr(generation, "compact_cache", recording_compact)

    def alive(self) -> dict[str, int]:
        gc.collect()
        return {name: sum(ref() is not None for ref in refs) for name, refs in self.refs.items()}

    def seen(self) -> dict[str, int]:
        return {name: len(refs) for name, refs in self.refs.items()}


def test_caches_are_released_after_each_call(pair, monkeypatch):
    target, head = pair
    objects = PerCallObjects(monkeypatch)
    run_calls(target, head, 5)
    assert objects.seen() == {"drafter": 5, "head_cache": 5, "target_cache": 5}, objects.seen()
    assert objects.alive() == {"drafter": 0, "head_cache": 0, "target_cache": 0}, (
        f"per-call objects still alive after generate() returned: {objects.alive()}"
    )
    stats = head.last_generation_stats
    held = [f.name for f in fields(stats) if isinstance(getattr(stats, f.name), torch.Tensor)]
    assert not held, f"last_generation_stats keeps tensors alive: {held}"


def test_returned_cache_lives_only_as_long_as_the_output(pair, monkeypatch):
    """With return_dict_in_generate the target cache is returned (like plain generate); dropping the output frees it."""
    target, head = pair
    objects = PerCallObjects(monkeypatch)
    out = target.generate(prompt(1), assistant_model=head, max_new_tokens=20, return_dict_in_generate=True)
    assert getattr(out, GENERATE_CACHE_FIELD) is not None and objects.alive()["target_cache"] == 1
    assert objects.alive()["head_cache"] == 0, "the head's cache must not outlive the call"
    del out
    assert objects.alive() == {"drafter": 0, "head_cache": 0, "target_cache": 0}


class Explode(StoppingCriteria):
    """Raises in the middle of decoding (after a few tokens), like a user's callback failing."""

    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("callback failed")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_failed_call_releases_caches_and_restores_the_head(pair, monkeypatch):
    target, head = pair
    objects = PerCallObjects(monkeypatch)
    head.train()
    try:
        target.generate(prompt(2), assistant_model=head, max_new_tokens=30,
                        stopping_criteria=StoppingCriteriaList([Explode(after=7)]))
    except RuntimeError as error:
        assert "callback failed" in str(error)
    else:
        pytest.fail("the stopping criterion should have raised")
    try:
        assert head.training, "the head's train/eval mode must be restored after a failed call"
        assert objects.alive() == {"drafter": 0, "head_cache": 0, "target_cache": 0}, objects.alive()
    finally:
        head.eval()


def test_a_leak_is_detected(pair, monkeypatch):
    """Power check of the measurement: keeping each call's target cache alive shows up in the tensor count."""
    target, head = pair
    kept, base_compact = [], generation.compact_cache

    def leaking_compact(cache, *args, **kwargs):
        kept.append(cache)
        return base_compact(cache, *args, **kwargs)

    run_calls(target, head, 1)
    before, _ = live_tensors()
    monkeypatch.setattr(generation, "compact_cache", leaking_compact)
    run_calls(target, head, 3)
    after, _ = live_tensors()
    assert after - before > MAX_TENSOR_GROWTH, "a leaked KV cache per call must be visible in the live tensor count"
    kept.clear()
