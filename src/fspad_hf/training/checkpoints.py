"""Training checkpoints: find the newest complete `checkpoint-N` folder (a kill may leave a partial one)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..head.loading import SAFE_WEIGHTS_NAME, weights_files
from ..integrity import CorruptCheckpointError, check_safetensors_file, read_json

logger = logging.getLogger(__name__)

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
        read_json(state)
        weights = [folder / name for name in (SAFE_WEIGHTS_NAME, "adapter_model.safetensors") if (folder / name).is_file()]
        if not weights:
            weights = weights_files(folder, None)
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



__all__ = ["checkpoint_problem", "last_complete_checkpoint", "TRAINER_STATE_NAME"]
