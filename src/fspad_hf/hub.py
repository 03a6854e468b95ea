"""Sharing heads: the heads shipped inside the package, and (see `push_head`) Hub repos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "heads"


def shipped_heads(target=None) -> dict[str, Path]:
    """Heads bundled with the package: `{folder name: path}`, only those built for `target` if given."""
    out = {}
    if not SHIPPED_DIR.is_dir():
        return out
    name = getattr(target, "name_or_path", None) if target is not None else None
    for cfg_path in sorted(SHIPPED_DIR.glob("*/config.json")):
        cfg = json.loads(cfg_path.read_text())
        if name and cfg.get("target_name_or_path") != name:
            continue
        out[cfg_path.parent.name] = cfg_path.parent
    return out


__all__ = ["shipped_heads", "SHIPPED_DIR"]
