"""Low-level file integrity shared by every room: safetensors headers, JSON files, sha256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open


class CorruptCheckpointError(ValueError):
    """A weights or config file of a head folder is corrupt, truncated or not what it claims to be."""


def check_safetensors_file(path: str | os.PathLike, hint: str = "") -> None:
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
            f"Download or copy it again. {hint}"
        ) from error


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path, hint: str = "") -> dict:
    try:
        with path.open(encoding="utf-8") as handle:
            payload = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptCheckpointError(f"{path} is not valid JSON (corrupt or truncated?): {error}. {hint}") from error
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(f"{path} must hold a JSON object, got {type(payload).__name__}. {hint}")
    return payload


def jsonl_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a JSONL file, split on "\n" only: `str.splitlines` also splits on U+2028 /
    U+2029 / \x1c..., which JSON allows unescaped inside strings (chat text has them)."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


__all__ = ["CorruptCheckpointError", "check_safetensors_file", "jsonl_lines", "read_json", "sha256_file"]
