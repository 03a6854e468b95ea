"""`FSPADTrainer`: a `transformers.Trainer` for partial alignment distillation (and EAGLE-2 / PosS).

The trainer's model is the draft head; the frozen target only supplies features (online, inside the
training step) or nothing at all (offline features precomputed with `fspad_hf.training.features`), plus its
embedding and LM head, which the head uses frozen and never saves.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from ..head.loading import SAFE_WEIGHTS_NAME
from ..head.modeling import FSPADDraftModel, unwrap_head
from .batches import collate
from .features import target_features
from .losses import LossWeights, position_mask
from .checkpoints import SaveOnSignalCallback, read_group_manifest, write_group_manifest
from .objective import DraftObjective, GroupObjective

TRAINING_ARGS_NAME = "training_args.bin"
ADAPTER_SAFE_WEIGHTS_NAME = "adapter_model.safetensors"

logger = logging.getLogger(__name__)


@dataclass
class FSPADTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the draft-head objective. Defaults follow the papers' recipe where it
    fits a CPU (AdamW betas 0.9/0.95, gradient clipping by value 0.5, linear warm-up)."""

    unroll_steps: int = field(
        default=1,
        metadata={"help": "HASS unroll steps per batch (1 = teacher forcing only). PosS heads train each "
                  "specialist on its draft positions: use num_draft_layers * positions_per_layer."},
    )
    eval_unroll_steps: int | None = field(
        default=None, metadata={"help": "Draft positions evaluated at eval steps (default: the head's tree_depth)."}
    )
    unroll_decay: float = field(
        default=1.0,
        metadata={"help": "Weight decay**k of HASS unroll step k in the training loss (1.0 = equal weights; "
                  "0 = teacher forcing only counts). Evaluation always weighs positions equally."},
    )
    feature_loss_weight: float = field(default=1.0, metadata={"help": "Weight of SmoothL1(o_r, f_{t+1})."})
    logit_loss_weight: float = field(default=0.1, metadata={"help": "Weight of the soft cross-entropy on o_p."})
    clip_grad_value: float | None = field(
        default=0.5, metadata={"help": "Clip gradients by value before each optimizer step (None: off)."}
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the papers use 0.95)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Norm clipping (off: value clipping is used)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep loss_mask/hidden_states columns."})
    anneal_steps: int = field(
        default=0,
        metadata={"help": "> 0: scale the scheduler's LR down linearly to 0 over the last N of max_steps, counted by the "
                  "global step, so that a run continued from a carry (whose scheduler restarts with a warm-up) anneals "
                  "at the same steps. Use with constant_with_warmup for warm-up, constant, then linear decay."},
    )
    save_on_signal: bool = field(
        default=False,
        metadata={"help": "Checkpoint at the end of the current step on SIGUSR1 (and go on) or SIGTERM (and stop): "
                  "kill -USR1 <pid> saves the steps since the last save_steps multiple."},
    )


class ClipGradValueCallback(TrainerCallback):
    """Clip the accumulated gradients by value right before the optimizer step."""

    def __init__(self, value: float):
        self.value = value

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        torch.nn.utils.clip_grad_value_([p for p in model.parameters() if p.grad is not None], self.value)


def anneal_by_global_step(scheduler, global_step, total_steps: int, anneal_steps: int) -> None:
    """Multiply each LR lambda of `scheduler` by min(1, steps left / anneal_steps), steps left counted from
    `global_step()` (the run's step, not the scheduler's own count, which restarts at 0 with a fresh optimizer).

    The factor is 1 until `total_steps - anneal_steps`, then falls linearly; the last optimizer step runs at
    1 / anneal_steps of the base LR. The wrapped lambdas are closures, so the scheduler's state_dict stays as
    before (LambdaLR keeps no state for plain functions).
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(f"anneal_steps needs a LambdaLR schedule (constant_with_warmup, linear, cosine...), got "
                         f"{type(scheduler).__name__}: pick another --lr_scheduler_type or set --anneal_steps 0.")
    if anneal_steps > total_steps:
        raise ValueError(f"anneal_steps ({anneal_steps}) is longer than the run ({total_steps} steps): lower it.")

    def wrap(base):
        # the LR the scheduler sets now is used by the next optimizer step, global_step() + 1
        return lambda count: base(count) * min(1.0, max(0, total_steps - global_step() - 1) / anneal_steps)

    scheduler.lr_lambdas = [wrap(base) for base in scheduler.lr_lambdas]


class FSPADTrainer(Trainer):
    """Trainer for an `FSPADDraftModel` (or a PEFT wrapper of one), or for several heads at once.

    The Trainer's `model` is a `DraftObjective` around it (the head's forward is inference-only);
    `trainer.head` is the head itself. Checkpoints are the head's `save_pretrained` folders (config +
    safetensors) or, with PEFT, the adapter files.

    `model={"eagle2": head_a, "fspad": head_b}` trains a head group (`GroupObjective`): the same batches,
    one target forward per step for all heads (the EAGLE-2 / FSPAD pair at equal data, steps and seed
    for little more than the cost of one); `trainer.heads[name]`, one checkpoint subfolder per head.

    Args:
        target: the frozen target LM. Needed for online features, and always for the frozen
            embedding / LM head (the head is bound to it). Its weights are never trained nor saved.
        Other arguments are `Trainer`'s. Batches hold `input_ids`, `loss_mask`, `attention_mask` and,
        for offline features, `hidden_states`.
    """

    def __init__(self, model=None, args: FSPADTrainingArguments | None = None, target: PreTrainedModel | None = None, **kwargs):
        if target is None:
            raise ValueError("FSPADTrainer needs `target=` (the frozen target model) for its embedding and LM head.")
        args = args or FSPADTrainingArguments(output_dir="fspad-head")
        group = dict(model) if isinstance(model, Mapping) else None
        for member in (group or {"head": model}).values():
            _check_trainable(unwrap_head(member))
        target.eval().requires_grad_(False)
        for member in (group or {"head": model}).values():
            unwrap_head(member).bind_target(target)
        self.target = target
        pad = getattr(target.generation_config, "pad_token_id", None) or 0
        kwargs.setdefault("data_collator", functools.partial(collate, pad_token_id=pad))
        objective = GroupObjective(group) if group is not None else DraftObjective(model)
        super().__init__(model=objective, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: let Trainer average over accumulation
        self._parts: dict[str, list[float]] = defaultdict(list)
        if getattr(args, "clip_grad_value", None):
            self.add_callback(ClipGradValueCallback(args.clip_grad_value))
        if getattr(args, "save_on_signal", False):
            self.add_callback(SaveOnSignalCallback())

    @property
    def stopped_by_signal(self) -> bool:
        """True when a stop signal (SIGTERM, `save_on_signal`) ended `train()` before `max_steps`."""
        return any(getattr(cb, "stopped", False) for cb in self.callback_handler.callbacks
                   if isinstance(cb, SaveOnSignalCallback))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if getattr(self.args, "anneal_steps", 0) > 0:
            anneal_by_global_step(scheduler, lambda: self.state.global_step, num_training_steps, self.args.anneal_steps)
        return scheduler

    @property
    def is_group(self) -> bool:
        return isinstance(self.model, GroupObjective)

    @property
    def head(self) -> FSPADDraftModel:
        if self.is_group:
            raise AttributeError(f"This trainer trains several heads ({', '.join(self.heads)}): use `trainer.heads[name]`.")
        return unwrap_head(self.model.model)

    @property
    def heads(self) -> dict[str, FSPADDraftModel]:
        """name -> head; a single head is named "head"."""
        return self.model.heads if self.is_group else {"head": self.head}

    def _members(self) -> dict[str, torch.nn.Module]:
        """name -> the trained module of each head (the head, or its PEFT wrapper)."""
        if self.is_group:
            return {name: member.model for name, member in self.model.members.items()}
        return {"head": self.model.model}

    def train(self, *args, **kwargs):
        check_training_data(self.train_dataset)
        try:
            return super().train(*args, **kwargs)
        finally:
            _drop_mixed_precision_wrapper(self.model)

    # -------------------------------------------------------------------------------- loss
    def _weights(self, training: bool = True) -> LossWeights:
        """Loss weights; the unroll decay applies to training only, so eval losses compare across recipes."""
        decay = getattr(self.args, "unroll_decay", 1.0) if training else 1.0
        return LossWeights(feature=self.args.feature_loss_weight, logits=self.args.logit_loss_weight, step_decay=decay)

    def _features(self, inputs) -> torch.Tensor:
        if "hidden_states" in inputs:  # offline
            return inputs["hidden_states"]
        return target_features(self.target, inputs["input_ids"], inputs.get("attention_mask"))  # online

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = model(
            input_ids=inputs["input_ids"],
            hidden_states=self._features(inputs),
            loss_mask=inputs["loss_mask"],
            unroll_steps=self.args.unroll_steps,
            loss_weights=self._weights(),
        )
        for name, value in metrics.items():
            self._parts[name].append(float(value))
        return (loss, metrics) if return_outputs else loss

    # -------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint is the head's own folder (or the PEFT adapter), loadable with from_pretrained; a head
        group writes one such folder per head plus a `heads.json` manifest."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if self.is_group:
            for name, member in self._members().items():
                member.save_pretrained(os.path.join(output_dir, name))
            write_group_manifest(output_dir, list(self._members()))
        else:
            self.model.model.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_group:
            names = read_group_manifest(resume_from_checkpoint)
            if names != list(self._members()):
                raise ValueError(f"Checkpoint {resume_from_checkpoint} holds heads {names}, this run trains "
                                 f"{list(self._members())}: resume with the same --method list, or use another output_dir.")
            for name, member in self._members().items():
                _load_member(member, os.path.join(resume_from_checkpoint, name))
        else:
            _load_member(self.model.model, resume_from_checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            logs.update({name: round(sum(v) / len(v), 5) for name, v in self._parts.items()})
            self._parts.clear()
        super().log(logs, start_time)

    # -------------------------------------------------------------------------------- eval
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss parts and per-position top-1 accuracy of a k-step unrolled draft (k = eval_unroll_steps),
        averaged over the evaluation batches of every process (summed across processes)."""
        steps = self.args.eval_unroll_steps or next(iter(self.heads.values())).config.tree_depth
        dataloader = self.get_eval_dataloader(eval_dataset)
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = defaultdict(float)
        batches = 0
        with torch.no_grad():
            for inputs in dataloader:
                inputs = self._prepare_inputs(inputs)
                loss, parts = self.model(
                    input_ids=inputs["input_ids"],
                    hidden_states=self._features(inputs),
                    loss_mask=inputs["loss_mask"],
                    unroll_steps=steps,
                    loss_weights=self._weights(training=False),
                )
                sums["loss"] += float(loss) / steps
                for name, value in parts.items():
                    sums[name] += float(value)
                batches += 1
        self.model.train(was_training)
        names = sorted(sums)  # same names on every process (same steps): reduce them as one vector
        totals = self.accelerator.reduce(torch.tensor([sums[n] for n in names] + [batches], dtype=torch.float64,
                                                      device=self.args.device), reduction="sum")
        count = max(float(totals[-1]), 1.0)
        metrics = {f"{metric_key_prefix}_{n}": float(v) / count for n, v in zip(names, totals[:-1].tolist())}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


def finish_distributed() -> None:
    """Wait for every rank, then close the process group; a no-op in one process. Call it last in a multi-process
    training script: a rank that leaves while the group is alive (rank 1 done while rank 0 still measures or
    saves) can abort in gloo's teardown ("terminate called without an active exception", SIGABRT) and fail
    the whole launch although training succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _check_trainable(head: FSPADDraftModel) -> None:
    if head.target_feature_layers is not None:  # e.g. an EAGLE-3 head (head/eagle3.py)
        raise NotImplementedError(
            f"FSPADTrainer trains heads on the target's last hidden state; this {head.config.head_kind} head "
            f"fuses target layers {list(head.target_feature_layers)}, which the training features do not "
            "provide yet. Train an FSPAD / EAGLE-2 / PosS head, or import a trained EAGLE-3 head "
            "(fspad_hf.interop.load_eagle3)."
        )


def _load_member(inner, folder: str) -> None:
    """Load one head's checkpoint folder (its weights, or its PEFT adapter) into `inner` in place."""
    adapter = os.path.join(folder, ADAPTER_SAFE_WEIGHTS_NAME)
    if os.path.isfile(adapter):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(inner, load_file(adapter))
        return
    weights = os.path.join(folder, SAFE_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise ValueError(f"Can't find a valid checkpoint at {folder} (no {SAFE_WEIGHTS_NAME}).")
    unwrap_head(inner).load_state_dict(load_file(weights))


def _drop_mixed_precision_wrapper(model) -> None:
    """Undo the autocast + float32-outputs wrapper accelerate puts on `forward` under bf16/fp16 training,
    so that the trained head, used in this same process, drafts in its own dtype."""
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)


def check_training_data(dataset, probe: int = 64) -> None:
    """Clear errors for an empty dataset, or one whose first examples have no loss position."""
    if dataset is None:
        raise ValueError("FSPADTrainer.train() needs a train_dataset.")
    if len(dataset) == 0:
        raise ValueError("The train_dataset is empty: check the data path and filters (max_length may have "
                         "truncated every assistant turn away).")
    for i in range(min(probe, len(dataset))):
        mask = torch.as_tensor(dataset[i]["loss_mask"])[None]
        if mask.shape[1] >= 3 and position_mask(mask).sum() > 0:
            return
    raise ValueError(
        f"None of the first {min(probe, len(dataset))} training examples has an assistant token to learn from "
        "(loss_mask is all zeros, or only on the first two positions): check the chat template's assistant "
        "markers and max_length."
    )


def select_draft_vocab(examples, size: int, vocab_size: int) -> torch.LongTensor:
    """The `size` most frequent assistant-token ids (loss_mask == 1) of tokenised examples, sorted."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ex in examples:
        ids = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        mask = torch.as_tensor(ex["loss_mask"], dtype=torch.bool)
        counts += torch.bincount(ids[mask], minlength=vocab_size)[:vocab_size]
    size = min(size, vocab_size)
    return torch.sort(torch.topk(counts, size).indices).values


def init_from_head(head: FSPADDraftModel, source: FSPADDraftModel) -> None:
    """Copy a trained head into `head`; a 1-layer source initialises every PosS specialist (METHOD.md 3)."""
    src, dst = source.state_dict(), head.state_dict()
    replicate = source.config.num_draft_layers == 1
    loaded = {}
    for key, value in dst.items():
        candidate = key
        if key not in src and replicate and key.startswith("layers."):
            candidate = "layers.0." + key.split(".", 2)[2]  # specialist i <- the single trained layer
        if candidate in src and src[candidate].shape == value.shape:
            loaded[key] = src[candidate]
    missing = [k for k in dst if k not in loaded and "rotary_emb" not in k]
    if missing:
        raise ValueError(
            f"Cannot initialise from {source.config.method_name} head: no matching weights for {missing[:4]}... "
            "(FS/PAD switches and sizes must match the source head)."
        )
    head.load_state_dict(loaded, strict=False)


__all__ = [
    "check_training_data",
    "init_from_head",
    "FSPADTrainer",
    "FSPADTrainingArguments",
    "ClipGradValueCallback",
    "select_draft_vocab",
]
