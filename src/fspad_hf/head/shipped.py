"""The shipped heads: found through the `fspad_hf_heads` data distribution (`pip install -e ./heads`).

A shipped head loads by its short name, offline: `FSPADDraftModel.from_pretrained("smollm2-fspad")`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

HEADS_PACKAGE = "fspad_hf_heads"
HEADS_INSTALL_HINT = "pip install -e ./heads  (from a clone of fspad-hf; the heads are a data-only distribution)"


def heads_dir() -> Path | None:
    """Folder of the installed `fspad_hf_heads` distribution, or None when it is not installed."""
    spec = importlib.util.find_spec(HEADS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def shipped_heads(target=None) -> dict[str, Path]:
    """Shipped heads `{short name: folder}`; only those trained for `target` (by name) if given."""
    root = heads_dir()
    if root is None:
        return {}
    name = getattr(target, "name_or_path", None) if target is not None else None
    out = {}
    for cfg_path in sorted(root.glob("*/config.json")):
        cfg = json.loads(cfg_path.read_text())
        if name and cfg.get("target_name_or_path") != name:
            continue
        out[cfg_path.parent.name] = cfg_path.parent
    return out


def looks_like_short_name(source) -> bool:
    """A bare name (no path separator, not an existing path): a shipped head, never a Hub repo id."""
    text = str(source)
    return not isinstance(source, os.PathLike) and "/" not in text and os.sep not in text and not os.path.exists(text)


def resolve_shipped(name: str) -> Path:
    """The folder of the shipped head `name`; a clear error listing the shipped heads otherwise."""
    heads = shipped_heads()
    if name in heads:
        return heads[name]
    if heads_dir() is None:
        raise FileNotFoundError(
            f"'{name}' is not a folder, and the shipped heads are not installed. Install them with "
            f"{HEADS_INSTALL_HINT}, or pass a head folder or a Hub repo id 'owner/name'."
        )
    raise FileNotFoundError(
        f"'{name}' is neither a folder nor a shipped head. Shipped heads: {', '.join(heads) or 'none'}. "
        "Pass one of them, a head folder, or a Hub repo id 'owner/name'."
    )


__all__ = ["heads_dir", "shipped_heads", "resolve_shipped", "looks_like_short_name", "HEADS_INSTALL_HINT"]
