"""Target features (post-final-norm hidden states) and their offline extraction to safetensors shards.

A target *feature* ``f_t`` is what the LM head consumes: the last decoder layer's output after the
final norm, i.e. ``decoder_of(target)(input_ids).last_hidden_state``.

On-disk layout written by :func:`extract_features` (``out_dir``)::

    manifest.json                 format version, target identity, dtype, counts, completed shards
    shard-00000.safetensors       examples [0, shard_size)
    shard-00001.safetensors       examples [shard_size, 2 * shard_size) ...

Each shard holds its examples concatenated along the token axis: ``input_ids`` int32 ``[N_tok]``,
``loss_mask`` uint8 ``[N_tok]``, ``hidden_states`` ``[N_tok, H]`` (storage dtype) and ``offsets``
int64 ``[n_ex + 1]`` (example ``j`` of the shard is tokens ``offsets[j]:offsets[j + 1]``).

Storage dtypes: bfloat16 (default), float16, float32, or int8 with one absmax scale per token
(``hidden_scale`` float32 ``[N_tok]``; H + 4 bytes a token, about half of bf16). int8 sets are format
version 2, so a reader that predates them refuses them instead of training on raw int8 codes; float sets
stay version 1. Readers dequantize int8 to float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..head.storage import from_rowwise_int8, rowwise_int8
from ..head.target_parts import decoder_of, text_config_of
from ..integrity import sha256_file

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "INT8_FORMAT_VERSION", "MANIFEST_NAME", "STORAGE_DTYPES", "STORAGE_DTYPE_NAMES", "OfflineFeatureDataset",
           "check_features_target", "extract_features", "feature_tokens", "load_feature_sets", "read_manifest", "target_features"]

FORMAT_VERSION = 1  # float storage; INT8_FORMAT_VERSION adds hidden_scale
INT8_FORMAT_VERSION = 2
STORAGE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.int8)
STORAGE_DTYPE_NAMES = tuple(str(d).removeprefix("torch.") for d in STORAGE_DTYPES)  # as the CLI and manifest spell them
MANIFEST_NAME = "manifest.json"
_IDENTITY_KEYS = ("model_type", "hidden_size", "vocab_size", "weights_fingerprint")
_DATA_KEYS = ("num_examples", "total_tokens", "shard_size", "dtype", "data_sha256")


def target_features(
    target: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Post-final-norm features ``[B, T, H]`` of the frozen target (one decoder forward, no logits)."""
    with torch.no_grad():
        out = decoder_of(target)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # [B, T, H]


def _weights_fingerprint(target: torch.nn.Module) -> str:
    """Short hash of the first values of every parameter (at bf16 resolution, so the load dtype does not matter)."""
    digest = hashlib.sha256()
    for name, param in target.named_parameters():
        if param.device.type == "meta":
            continue
        head = param.detach().flatten()[:64].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(name.encode() + head.numpy().tobytes())
    return digest.hexdigest()[:16]


def _data_sha256(examples: Sequence[dict]) -> tuple[str, int]:
    """Hash of all token ids and loss masks, and the total token count; validates each example."""
    digest, total = hashlib.sha256(), 0
    for i, example in enumerate(examples):
        ids, mask = list(example["input_ids"]), list(example["loss_mask"])
        if len(ids) != len(mask) or not ids:
            raise ValueError(f"example {i}: input_ids and loss_mask must be non-empty and of equal length")
        digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
        digest.update(torch.tensor(mask, dtype=torch.uint8).numpy().tobytes())
        total += len(ids)
    return digest.hexdigest(), total


def _write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to a temp file, fsync it, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a feature directory."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run extract_features(target, examples, '{out_dir}') first")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def shard_problem(out_dir: Path, entry: dict, check_hash: bool = True) -> str | None:
    """Why a completed shard entry is not usable (missing / wrong size / wrong hash), or None if it is."""
    path = out_dir / entry["file"]
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry["bytes"]:
        return f"size {path.stat().st_size} != {entry['bytes']}"
    if check_hash and sha256_file(path) != entry["sha256"]:
        return "sha256 mismatch"
    return None


def _batch_features(target: torch.nn.Module, rows: list[list[int]]) -> list[torch.Tensor]:
    """Features of each token list (right-padded batch forward), as ``[T_i, H]`` tensors."""
    lengths = [len(r) for r in rows]
    width = max(lengths)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    device = target.device
    mask = None if min(lengths) == width else attention_mask.to(device)
    hidden = target_features(target, input_ids.to(device), mask)  # [B, T, H]
    return [hidden[i, :n] for i, n in enumerate(lengths)]


def _compute_shard(
    target: torch.nn.Module, examples: Sequence[dict], dtype: torch.dtype, batch_size: int, progress: Any
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Flat shard tensors for ``examples`` (in order), and for int8 storage the shard's sums of squared
    features and squared rounding errors (``feature_sq``, ``int8_error_sq``: what int8 costs, measured)."""
    ids = [list(e["input_ids"]) for e in examples]
    hidden: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []  # int8 storage: one scale per token (a token's features share one range)
    stats = {"feature_sq": 0.0, "int8_error_sq": 0.0} if dtype == torch.int8 else {}
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        for h in _batch_features(target, rows):  # [T_i, H]
            if dtype == torch.int8:
                exact = h.to("cpu", torch.float32)  # [T_i, H]
                q, scale = rowwise_int8(exact)  # [T_i, H], [T_i]
                hidden.append(q)
                scales.append(scale)
                stats["feature_sq"] += float(exact.square().sum())
                stats["int8_error_sq"] += float((from_rowwise_int8(q, scale, torch.float32) - exact).square().sum())
            else:
                hidden.append(h.to("cpu", dtype))
        progress.update(len(rows))
    lengths = torch.tensor([0] + [len(r) for r in ids], dtype=torch.int64)
    tensors = {
        "input_ids": torch.tensor([t for r in ids for t in r], dtype=torch.int32),  # [N_tok]
        "loss_mask": torch.tensor([m for e in examples for m in e["loss_mask"]], dtype=torch.uint8),  # [N_tok]
        "hidden_states": torch.cat(hidden, dim=0).contiguous(),  # [N_tok, H]
        "offsets": torch.cumsum(lengths, dim=0),  # [n_ex + 1]
    }
    if scales:
        tensors["hidden_scale"] = torch.cat(scales).contiguous()  # [N_tok]
    return tensors, stats


def _write_shard(
    out_dir: Path, index: int, start: int, end: int, tensors: dict[str, torch.Tensor], stats: dict[str, float]
) -> dict:
    """Write shard ``index`` atomically (temp file, fsync, rename); return its manifest entry (with ``stats``)."""
    path = out_dir / f"shard-{index:05d}.safetensors"
    tmp = out_dir / f".{path.name}.tmp"
    version = INT8_FORMAT_VERSION if "hidden_scale" in tensors else FORMAT_VERSION
    save_file(tensors, str(tmp), metadata={"format_version": str(version), "start": str(start), "end": str(end)})
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return {"index": index, "file": path.name, "start": start, "end": end, "num_tokens": int(tensors["offsets"][-1]),
            "bytes": path.stat().st_size, "sha256": sha256_file(path), **stats}


def _new_manifest(target: torch.nn.Module, examples: Sequence[dict], shard_size: int, dtype: torch.dtype) -> dict:
    """Manifest header (no shards yet) describing this target and data."""
    cfg = text_config_of(target)
    data_sha256, total = _data_sha256(examples)
    identity = {"name_or_path": getattr(target.config, "_name_or_path", "") or "", "model_type": cfg.model_type,
                "hidden_size": int(cfg.hidden_size), "vocab_size": int(cfg.vocab_size),
                "weights_fingerprint": _weights_fingerprint(target)}
    version = INT8_FORMAT_VERSION if dtype == torch.int8 else FORMAT_VERSION
    return {"format_version": version, "target": identity, "dtype": str(dtype).removeprefix("torch."),
            "num_examples": len(examples), "total_tokens": total, "shard_size": shard_size,
            "data_sha256": data_sha256, "complete": False, "shards": []}


def _check_compatible(old: dict, new: dict, out_dir: Path) -> None:
    """Raise if an existing manifest was written for another target, data set or layout."""
    pairs = [(f"target {k}", old.get("target", {}).get(k), new["target"][k]) for k in _IDENTITY_KEYS]
    pairs += [(k, old.get(k), new[k]) for k in ("format_version", *_DATA_KEYS)]
    diffs = [f"{name}: {a!r} != {b!r}" for name, a, b in pairs if a != b]
    if diffs:
        raise ValueError(
            f"{out_dir / MANIFEST_NAME} was written for a different target or data ({'; '.join(diffs)}). "
            "Use a new out_dir, or pass overwrite=True to delete the existing shards and start again."
        )
    if old["target"].get("name_or_path") != new["target"]["name_or_path"]:
        logger.warning("target name changed (%r -> %r) but weights match; resuming",
                       old["target"].get("name_or_path"), new["target"]["name_or_path"])


def _clear(out_dir: Path) -> None:
    """Delete the manifest and shard files (only files this module writes)."""
    for path in [*out_dir.glob("shard-*.safetensors"), *out_dir.glob(".*.tmp"), out_dir / MANIFEST_NAME]:
        path.unlink(missing_ok=True)


def _log_estimate(manifest: dict, dtype: torch.dtype, out_dir: Path) -> None:
    """Log the expected size of the hidden states, and warn if the disk looks too small."""
    tokens, hidden = manifest["total_tokens"], manifest["target"]["hidden_size"]
    element = torch.empty((), dtype=dtype).element_size()
    scale = 4 if dtype == torch.int8 else 0  # int8: a float32 scale per token
    nbytes, free = tokens * (hidden * element + scale), shutil.disk_usage(out_dir).free
    logger.info("feature extraction: %d examples, %d tokens x (H=%d x %d bytes + %d) = %.2f GiB (%.2f GiB free in %s)",
                manifest["num_examples"], tokens, hidden, element, scale, nbytes / 2**30, free / 2**30, out_dir)
    if nbytes > free:
        logger.warning("the features (%.2f GiB) may not fit in the free space (%.2f GiB)", nbytes / 2**30, free / 2**30)


def extract_features(
    target: torch.nn.Module,
    examples: Sequence[dict],
    out_dir: str | os.PathLike,
    shard_size: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 1,
    overwrite: bool = False,
) -> Path:
    """Precompute the target's features for tokenised examples and store them in resumable shards.

    Args:
        target: the frozen target causal LM (any device; inputs are moved to ``target.device``).
        examples: dicts with ``input_ids`` and ``loss_mask`` (lists of ints, e.g. from
            :func:`fspad_hf.training.data.tokenize_conversation`); order is preserved.
        out_dir: directory for ``manifest.json`` and ``shard-XXXXX.safetensors``.
        shard_size: examples per shard.
        dtype: storage dtype of ``hidden_states``: bfloat16, float16, float32, or int8 (a float32 absmax
            scale per token; about half the disk of bf16, rounding error <= absmax / 254 per element).
        batch_size: examples per target forward (right-padded).
        overwrite: delete an existing manifest/shards in ``out_dir`` instead of resuming.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. Re-running with the same arguments skips shards that
        are complete and intact, and recomputes missing or corrupt ones.

    Raises:
        ValueError: ``out_dir`` holds features of another target / data set / dtype / shard size, or
            ``dtype`` is not a storage dtype.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"feature storage dtype {dtype} is not supported; use one of {', '.join(STORAGE_DTYPE_NAMES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _new_manifest(target, examples, shard_size, dtype)
    if overwrite:
        _clear(out)
    elif (out / MANIFEST_NAME).is_file():
        old = read_manifest(out)
        _check_compatible(old, manifest, out)
        manifest["shards"] = old.get("shards", [])
    _log_estimate(manifest, dtype, out)

    n_shards = -(-len(examples) // shard_size)
    done: dict[int, dict] = {}
    for entry in manifest["shards"]:
        problem = shard_problem(out, entry)
        if problem is None:
            done[entry["index"]] = entry
        else:
            logger.warning("shard %s is %s: recomputing it", entry["file"], problem)
    manifest["shards"] = sorted(done.values(), key=lambda e: e["index"])
    todo = [i for i in range(n_shards) if i not in done]
    logger.info("%d of %d shards already complete; computing %d", len(done), n_shards, len(todo))

    was_training = target.training
    target.eval()
    skipped = sum(e["end"] - e["start"] for e in done.values())
    try:
        with tqdm(total=len(examples), initial=skipped, desc="extracting features", unit="ex") as progress:
            for index in todo:
                start, end = index * shard_size, min((index + 1) * shard_size, len(examples))
                shard_examples = [examples[i] for i in range(start, end)]  # also works for a datasets.Dataset
                tensors, stats = _compute_shard(target, shard_examples, dtype, batch_size, progress)
                manifest["shards"].append(_write_shard(out, index, start, end, tensors, stats))
                manifest["shards"].sort(key=lambda e: e["index"])
                manifest["complete"] = len(manifest["shards"]) == n_shards
                _write_json_atomic(out / MANIFEST_NAME, manifest)
    finally:
        target.train(was_training)
    manifest["complete"] = True
    _write_json_atomic(out / MANIFEST_NAME, manifest)
    _log_int8_rounding(manifest)
    return out


def _log_int8_rounding(manifest: dict) -> None:
    """Log the measured int8 rounding of a feature set: RMS error against the features' RMS (int8 sets only)."""
    shards = [e for e in manifest["shards"] if "int8_error_sq" in e]
    if not shards:
        return
    count = sum(e["num_tokens"] for e in shards) * manifest["target"]["hidden_size"]  # the shards that measured it
    error = (sum(e["int8_error_sq"] for e in shards) / count) ** 0.5
    rms = (sum(e["feature_sq"] for e in shards) / count) ** 0.5
    logger.info("int8 features: rounding error RMS %.4f, %.2f%% of the features' RMS %.4f", error, 100 * error / rms, rms)


class OfflineFeatureDataset(Dataset):
    """Per-example view of an extracted feature directory; shards are opened lazily (small LRU).

    Items are ``{"input_ids": LongTensor[T], "loss_mask": LongTensor[T], "hidden_states": Tensor[T, H]}``
    with ``hidden_states`` in the storage dtype (float32 for an int8 set: dequantized with its per-token scale).

    Args:
        out_dir: a directory written by :func:`extract_features`.
        verify: ``"sha256"`` (hash every shard, slow for large sets), ``"size"`` (default) or ``"none"``.
        max_open_shards: size of the LRU of open shards.
    """

    def __init__(self, out_dir: str | os.PathLike, verify: str = "size", max_open_shards: int = 4):
        if verify not in ("sha256", "size", "none"):
            raise ValueError(f"verify must be 'sha256', 'size' or 'none', got {verify!r}")
        self.out_dir = Path(out_dir)
        self.manifest = read_manifest(self.out_dir)
        version = self.manifest.get("format_version")
        if version not in (FORMAT_VERSION, INT8_FORMAT_VERSION):
            raise ValueError(f"{self.out_dir}: unsupported feature format {version} (this fspad-hf reads "
                             f"{FORMAT_VERSION} and {INT8_FORMAT_VERSION}); upgrade fspad-hf or re-extract the features")
        self.int8 = version == INT8_FORMAT_VERSION
        self.shards = sorted(self.manifest["shards"], key=lambda e: e["start"])
        covered = sum(e["end"] - e["start"] for e in self.shards)
        bad = [] if verify == "none" else [
            f"{e['file']} ({p})" for e in self.shards if (p := shard_problem(self.out_dir, e, verify == "sha256"))
        ]
        if bad or covered != self.manifest["num_examples"] or not self.manifest.get("complete"):
            raise ValueError(
                f"{self.out_dir} is not a complete, intact feature set (shards cover {covered} of "
                f"{self.manifest['num_examples']} examples; bad shards: {', '.join(bad) or 'none'}). "
                "Re-run extract_features with the same target and examples to recompute them."
            )
        self._starts = [e["start"] for e in self.shards]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[int, tuple[Any, torch.Tensor]] = OrderedDict()

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["target"]["hidden_size"])

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    def __getstate__(self) -> dict:
        """Open shard handles are not picklable (DataLoader workers): drop them."""
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, k: int) -> tuple[Any, torch.Tensor]:
        """``(handle, offsets)`` of shard ``k``, opening it if needed (LRU)."""
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self.out_dir / self.shards[k]["file"]
        try:
            handle = safe_open(str(path), framework="pt")
            offsets = handle.get_tensor("offsets")
        except (OSError, SafetensorError) as error:
            raise ValueError(f"cannot read feature shard {path}: {error}. Re-run extract_features to redo it.") from error
        self._open[k] = (handle, offsets)
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return handle, offsets

    def example_lengths(self) -> list[int]:
        """Token count of every example (reads each shard's offsets)."""
        lengths: list[int] = []
        for k in range(len(self.shards)):
            offsets = self._shard(k)[1]
            lengths += (offsets[1:] - offsets[:-1]).tolist()
        return lengths

    def _locate(self, index: int) -> tuple[Any, int, int]:
        """``(shard handle, a, b)``: example ``index`` is rows ``a:b`` of that shard."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        index %= len(self)
        k = bisect_right(self._starts, index) - 1
        handle, offsets = self._shard(k)
        local = index - self.shards[k]["start"]
        return handle, int(offsets[local]), int(offsets[local + 1])

    def tokens(self, index: int) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``loss_mask`` of one example, without reading its hidden states."""
        handle, a, b = self._locate(index)
        return {
            "input_ids": handle.get_slice("input_ids")[a:b].long(),  # [T]
            "loss_mask": handle.get_slice("loss_mask")[a:b].long(),  # [T]
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        handle, a, b = self._locate(index)
        hidden = handle.get_slice("hidden_states")[a:b]  # [T, H]
        if self.int8:
            hidden = from_rowwise_int8(hidden, handle.get_slice("hidden_scale")[a:b], torch.float32)  # [T, H]
        return {**self.tokens(index), "hidden_states": hidden}


def check_features_target(manifest: dict, target: torch.nn.Module, where: str | os.PathLike = "features") -> None:
    """Raise if offline features were extracted from another target than ``target``.

    Compares model type, hidden size, vocabulary and the weights fingerprint (taken at bf16
    resolution, so a float32 and a bfloat16 load of the same weights match).
    """
    cfg = text_config_of(target)
    current = {"model_type": cfg.model_type, "hidden_size": int(cfg.hidden_size), "vocab_size": int(cfg.vocab_size),
               "weights_fingerprint": _weights_fingerprint(target)}
    stored = manifest.get("target", {})
    diffs = [f"{k}: features {stored.get(k)!r} != target {v!r}" for k, v in current.items() if stored.get(k) != v]
    if diffs:
        raise ValueError(
            f"{where} were extracted from a different target ({'; '.join(diffs)}). Train against the target "
            "that produced them, or re-extract with `fspad-hf prepare --features --target ...`."
        )


def load_feature_sets(dirs: str | Sequence[str | os.PathLike], target: torch.nn.Module | None = None):
    """One dataset over one or several feature directories (a comma-separated string or a list).

    Every directory must be complete and come from the same target (checked against ``target`` when
    given). Returns an :class:`OfflineFeatureDataset` or a ``ConcatDataset`` of them, in the given order.
    """
    paths = [p.strip() for p in dirs.split(",") if p.strip()] if isinstance(dirs, str) else list(dirs)
    if not paths:
        raise ValueError("no feature directory given")
    sets = [OfflineFeatureDataset(p) for p in paths]
    for path, ds in zip(paths, sets):
        if target is not None:
            check_features_target(ds.manifest, target, path)
        elif ds.manifest["target"] != sets[0].manifest["target"]:
            raise ValueError(f"{path} and {paths[0]} were extracted from different targets; use one target's features")
    return sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)


def feature_tokens(dataset, indices: Sequence[int]):
    """Yield ``{"input_ids", "loss_mask"}`` of ``dataset[i]`` for ``i`` in ``indices`` without reading hidden states.

    ``dataset`` is what :func:`load_feature_sets` returns (one set or a ``ConcatDataset`` of them); used to
    count tokens (draft-vocabulary selection) at a fraction of the cost of loading the features.
    """
    if isinstance(dataset, OfflineFeatureDataset):
        for i in indices:
            yield dataset.tokens(i)
        return
    if not isinstance(dataset, torch.utils.data.ConcatDataset):
        raise TypeError(f"expected an OfflineFeatureDataset or a ConcatDataset of them, got {type(dataset).__name__}")
    for i in indices:
        k = bisect_right(dataset.cumulative_sizes, i)
        yield dataset.datasets[k].tokens(i - (dataset.cumulative_sizes[k - 1] if k else 0))
