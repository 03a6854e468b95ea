"""Training checkpoints: find the newest complete `checkpoint-N` folder (a kill may leave a partial one),
carries (int8 heads + trainer state, to continue on another machine), and checkpoints on demand (a signal)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..head.loading import SAFE_WEIGHTS_NAME, weights_files
from ..integrity import CorruptCheckpointError, check_safetensors_file, read_json

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
GROUP_MANIFEST_NAME = "heads.json"  # a head-group checkpoint: {"heads": [names]}, one subfolder per head
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
        members = [folder / name for name in read_group_manifest(folder)] if (folder / GROUP_MANIFEST_NAME).is_file() else [folder]
        for member in members:
            weights = [member / name for name in (SAFE_WEIGHTS_NAME, "adapter_model.safetensors") if (member / name).is_file()]
            if not weights:
                weights = weights_files(member, None)
            if not weights:
                return f"no safetensors weights in {member}"
            for path in weights:
                check_safetensors_file(path)
    except (CorruptCheckpointError, FileNotFoundError, ValueError) as error:
        return str(error)
    return None


def write_group_manifest(folder: str | os.PathLike, names: list[str]) -> None:
    (Path(folder) / GROUP_MANIFEST_NAME).write_text(json.dumps({"heads": list(names)}) + "\n")


def read_group_manifest(folder: str | os.PathLike) -> list[str]:
    """The head names of a head-group checkpoint, in training order."""
    path = Path(folder) / GROUP_MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not a head-group checkpoint (no {GROUP_MANIFEST_NAME}).")
    return list(read_json(path)["heads"])


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



CARRY_NAME = "carry.json"  # marks a carry folder (save_carry): where it came from


def save_carry(checkpoint: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """A small copy of a training checkpoint that another machine continues from (`restore_carry`).

    It holds each head as config + int8 weights (`head.storage`, ~1/4 of the float32 checkpoint) and the
    trainer state (step, epoch, log history). The AdamW moments and the LR-scheduler state are left out
    (twice the weights again): a run continued from a carry starts its optimizer afresh and warms the
    learning rate up again, which the first steps after a restart show in the log.
    """
    from ..head.modeling import FSPADDraftModel
    from ..head.storage import save_int8

    checkpoint, dest = Path(checkpoint), Path(dest)
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ValueError(f"{checkpoint} is not a complete checkpoint ({problem}).")
    group = (checkpoint / GROUP_MANIFEST_NAME).is_file()
    names = read_group_manifest(checkpoint) if group else [None]
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        save_int8(FSPADDraftModel.from_pretrained(checkpoint / name if name else checkpoint), dest / name if name else dest)
    if group:
        write_group_manifest(dest, names)
    state = read_json(checkpoint / TRAINER_STATE_NAME)
    (dest / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
    (dest / CARRY_NAME).write_text(json.dumps({"from": str(checkpoint), "global_step": state.get("global_step"),
                                               "optimizer": "not kept: restarts with warm-up"}, indent=1) + "\n")
    return dest


def restore_carry(carry: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Turn a carry folder into `output_dir/checkpoint-N` (float32 weights) so that `Trainer` resumes at step N.

    If `output_dir` already holds a complete checkpoint at step >= N (this machine trained further), that
    one is returned instead and nothing is written.
    """
    from ..head.modeling import FSPADDraftModel

    carry, output_dir = Path(carry), Path(output_dir)
    if not (carry / CARRY_NAME).is_file():
        raise ValueError(f"{carry} is not a carry folder (no {CARRY_NAME}); make one with `fspad-hf carry`.")
    state = read_json(carry / TRAINER_STATE_NAME)
    step = int(state["global_step"])
    local = last_complete_checkpoint(output_dir)
    if local is not None and int(local.name.rsplit("-", 1)[1]) >= step:
        return local
    folder = output_dir / f"checkpoint-{step}"
    group = (carry / GROUP_MANIFEST_NAME).is_file()
    names = read_group_manifest(carry) if group else [None]
    for name in names:
        head = FSPADDraftModel.from_pretrained(carry / name if name else carry, dtype=torch.float32)
        head.save_pretrained(folder / name if name else folder)
    if group:
        write_group_manifest(folder, names)
    (folder / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")  # last: marks it complete
    logger.info("continuing from carry %s at step %d (optimizer and LR schedule restart)", carry, step)
    return folder


class SaveOnSignalCallback(TrainerCallback):
    """Checkpoint at the end of the current step when the process gets a signal, so no step is lost.

    `save_signals` (default SIGUSR1): save and go on (`kill -USR1 <pid>` before a machine goes away);
    `stop_signals` (default SIGTERM): save and stop. A handler only records the signal; the step in
    progress finishes and `Trainer` writes the checkpoint as at a `save_steps` multiple. Signal handlers
    can only be set from the main thread: elsewhere this callback warns and does nothing.
    """

    def __init__(self, save_signals=(signal.SIGUSR1,), stop_signals=(signal.SIGTERM,)):
        self.save_signals, self.stop_signals = tuple(save_signals), tuple(stop_signals)
        self.pending: int | None = None
        self.stopped = False  # a stop signal ended training (before max_steps)
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            logger.warning("SaveOnSignalCallback: not in the main thread, no signal handler installed")
            return
        for sig in self.save_signals + self.stop_signals:
            self.previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        self.pending = signum if self.pending not in self.stop_signals else self.pending  # a stop is never downgraded

    def restore(self) -> None:
        """Put back the handlers that were there before (the trainer calls it when training ends)."""
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.pending is None:
            return
        stop = self.pending in self.stop_signals
        logger.warning("signal %s: checkpoint at step %d%s", signal.Signals(self.pending).name, state.global_step,
                       ", then stop" if stop else "")
        control.should_save = True
        control.should_training_stop = control.should_training_stop or stop
        self.stopped = self.stopped or stop
        self.pending = None

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()


__all__ = ["SaveOnSignalCallback", "checkpoint_problem", "save_carry", "restore_carry", "last_complete_checkpoint", "read_group_manifest", "write_group_manifest",
           "GROUP_MANIFEST_NAME", "TRAINER_STATE_NAME"]
