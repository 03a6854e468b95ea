"""Safe loading of draft-head folders: JSON config + safetensors weights only.

A head folder is data, never code: `FSPADDraftModel.from_pretrained` reads `config.json` and
`model.safetensors` (or a sharded safetensors index) and nothing else. Pickle checkpoints
(`pytorch_model.bin`, `*.pt`, ...) are refused because unpickling can execute arbitrary code, and no
`trust_remote_code` is needed or used. The checks here run before transformers touches the files, so
a broken folder gives an error that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
INT8_WEIGHTS_NAME = "model.int8.safetensors"  # int8 storage, see fspad_hf.storage
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_SAVE_HINT = "Save the head again with head.save_pretrained(folder) (it writes config.json + model.safetensors)."


class CorruptCheckpointError(ValueError):
    """A weights or config file of a head folder is corrupt, truncated or not what it claims to be."""


def _variant_name(name: str, variant: str | None) -> str:
    """`model.safetensors` -> `model.<variant>.safetensors` (transformers' naming)."""
    if not variant:
        return name
    stem, ext = name.split(".", 1)
    return f"{stem}.{variant}.{ext}"


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise `CorruptCheckpointError` naming `path` if its safetensors header is unreadable.

    safetensors checks the header and that the tensors cover the file exactly, so a truncated or
    overwritten file is caught here without reading the tensor data.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        raise CorruptCheckpointError(
            f"The weights file {path} ({path.stat().st_size} bytes) is corrupt or truncated: {error}. "
            f"Download or copy it again. {_SAVE_HINT}"
        ) from error


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as handle:
            payload = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptCheckpointError(f"{path} is not valid JSON (corrupt or truncated?): {error}. {_SAVE_HINT}") from error
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(f"{path} must hold a JSON object, got {type(payload).__name__}. {_SAVE_HINT}")
    return payload


def check_head_config(path: Path) -> None:
    """The folder's `config.json` must describe an FSPAD head built for a target."""
    config = _read_json(path)
    if config.get("model_type") not in (None, "fspad"):
        raise ValueError(
            f"{path} describes a '{config.get('model_type')}' model, not an FSPAD draft head (model_type 'fspad'). "
            "Load target models with AutoModelForCausalLM; load heads saved by FSPADDraftModel.save_pretrained."
        )
    if config.get("auto_map"):
        logger.warning("%s has an 'auto_map' (remote code) entry; FSPADDraftModel ignores it and runs no code from the folder.", path)
    if not isinstance(config.get("target_config"), dict):
        raise ValueError(
            f"{path} has no 'target_config' (the target's text config the head's layers are built from), so the "
            "head cannot be constructed. Rebuild the head with FSPADDraftModel.from_target(target) and save it again."
        )


def _weights_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors files `from_pretrained` will read (single file, or every file of the index)."""
    single = folder / _variant_name(SAFE_WEIGHTS_NAME, variant)
    if single.is_file():
        return [single]
    index = folder / _variant_name(SAFE_INDEX_NAME, variant)
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpointError(f"{index} has no 'weight_map'. {_SAVE_HINT}")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists weight files that are missing from {folder}: {missing}.")
        return files
    int8 = folder / INT8_WEIGHTS_NAME  # compact storage of bundled heads (fspad_hf.storage)
    return [int8] if variant is None and int8.is_file() else []


def looks_like_missing_local_path(source: str | os.PathLike) -> bool:
    """A path that cannot be a Hub repo id ("owner/name") and does not exist locally."""
    text = str(source)
    if os.path.exists(text):
        return False
    return isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def check_head_folder(folder: str | os.PathLike, variant: str | None = None, need_config: bool = True) -> list[Path]:
    """Check a local head folder before loading: config present and sane, safetensors weights readable.
    Returns the weights files that will be read.

    Raises:
        FileNotFoundError: no `config.json` (when `need_config`) or no weights at all.
        ValueError: only pickle weights are present (refused), or the config is not an FSPAD head.
        CorruptCheckpointError: a config/weights file is corrupt or truncated.
    """
    folder = Path(folder)
    config = folder / CONFIG_NAME
    if need_config:
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}, so it is not a saved FSPAD head. {_SAVE_HINT}")
        check_head_config(config)
    files = _weights_files(folder, variant)
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if not files:
        if pickles:
            raise ValueError(
                f"{folder} holds only pickle checkpoint(s) {pickles}; fspad_hf loads heads from safetensors only, "
                "because unpickling can run arbitrary code. If you trust the file, convert it yourself: "
                "state = torch.load(path, weights_only=True); head.load_state_dict(state); head.save_pretrained(folder)."
            )
        raise FileNotFoundError(
            f"{folder} has no weights file ({_variant_name(SAFE_WEIGHTS_NAME, variant)} or "
            f"{_variant_name(SAFE_INDEX_NAME, variant)}). {_SAVE_HINT}"
        )
    if pickles:
        logger.info("Ignoring pickle file(s) %s in %s: only safetensors weights are loaded.", pickles, folder)
    for path in files:
        check_safetensors_file(path)
    return files


TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a `Trainer` checkpoint folder is unusable (a kill while it was written), or None if it is complete.

    `Trainer` writes `trainer_state.json` last, so a complete checkpoint has a parseable trainer state
    and readable weights (`model.safetensors`, or a PEFT `adapter_model.safetensors`).
    """
    folder = Path(folder)
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        _read_json(state)
        weights = [folder / name for name in (SAFE_WEIGHTS_NAME, "adapter_model.safetensors") if (folder / name).is_file()]
        if not weights:
            weights = _weights_files(folder, None)
        if not weights:
            return "no safetensors weights"
        for path in weights:
            check_safetensors_file(path)
    except (CorruptCheckpointError, FileNotFoundError) as error:
        return str(error)
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete `checkpoint-N` folder of a training run, skipping half-written ones (or None).

    Pass it as `trainer.train(resume_from_checkpoint=...)`: `resume_from_checkpoint=True` picks the
    newest folder even when a kill interrupted its writing.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_DIR.match(p.name))),
        reverse=True,
    )
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping incomplete checkpoint %s (%s).", folder, problem)
    return None


__all__ = ["CorruptCheckpointError", "check_head_folder", "looks_like_missing_local_path", "last_complete_checkpoint",
           "checkpoint_problem", "check_head_config", "check_safetensors_file", "PICKLE_SUFFIXES"]
