"""Self-distillation data: regenerate the assistant turns of chat conversations with the target itself.

A draft head learns to predict the *target's* distribution, so training on the target's own answers
(rather than on another model's, as in ShareGPT) raises acceptance. :func:`regenerate_conversations`
walks each conversation turn by turn: user/system turns are kept verbatim, each assistant turn is
replaced by the target's generation given the history so far (including its own earlier answers).

The output is OpenAI-messages JSONL (``{"id": <input index>, "messages": [...]}`` per line), readable by
:func:`fspad_hf.training.data.load_conversations`. Input conversations should come from ``load_conversations``,
which refuses evaluation data (Spec-Bench); this module has no loading path of its own.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .chat_masks import assistant_char_spans, render_chat, special_token_ids

logger = logging.getLogger(__name__)

__all__ = ["DistillStats", "read_done_ids", "regenerate_conversations", "stop_token_ids", "greedy_continuations"]

_PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]


@dataclass
class DistillStats:
    """Counts of one :func:`regenerate_conversations` run."""

    already_done: int = 0  # ids found in out_path from an earlier run
    written: int = 0
    skipped_long_prompt: int = 0  # first prompt longer than max_prompt_tokens: nothing written
    truncated_long_prompt: int = 0  # a later prompt too long: written up to the last regenerated answer
    stopped_empty_answer: int = 0  # empty answers: the conversation is written up to the previous answer
    skipped_no_answer: int = 0  # not written: no assistant turn, or an empty first answer
    dropped_truncated_line: bool = False  # a partial last line of a killed run was removed


@dataclass
class _Conversation:
    """One conversation being regenerated: ``out`` is the new message list built so far."""

    id: int
    source: Sequence[dict]
    out: list[dict] = field(default_factory=list)
    pos: int = 0  # next index into source
    stopped: bool = False

    def advance(self) -> bool:
        """Copy non-assistant turns into ``out``; True when the next source turn is an assistant turn."""
        while not self.stopped and self.pos < len(self.source) and self.source[self.pos]["role"] != "assistant":
            message = self.source[self.pos]
            self.out.append({"role": message["role"], "content": message["content"]})
            self.pos += 1
        return not self.stopped and self.pos < len(self.source)

    def answered(self) -> list[dict]:
        """``out`` cut after its last assistant turn (trailing unanswered turns dropped)."""
        last = max((i for i, m in enumerate(self.out) if m["role"] == "assistant"), default=-1)
        return self.out[: last + 1]


def stop_token_ids(tokenizer: Any, target: Any = None) -> list[int]:
    """Token ids that end an assistant turn: eos, the template's end-of-turn token, the target's eos."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    ids.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
    text, spans = assistant_char_spans(tokenizer, _PROBE)
    _, content_end, turn_end = spans[-1]
    specials = special_token_ids(tokenizer)
    tail = tokenizer(text[content_end:turn_end], add_special_tokens=False)["input_ids"]
    end_of_turn = next((t for t in tail if t in specials), None)
    if end_of_turn is not None:
        ids.add(int(end_of_turn))
    if not ids:
        raise ValueError("the tokenizer has no eos token and its chat template no special end-of-turn token")
    return sorted(ids)


def read_done_ids(out_path: str | os.PathLike) -> tuple[dict[int, list[dict]], bool]:
    """Records already in ``out_path`` as ``{id: messages}``, dropping a truncated last line in place.

    Returns:
        ``(records, dropped)``: ``dropped`` is True when a partial last line (a killed run) was cut off;
        a last line without its newline is always treated as partial.

    Raises:
        ValueError: a line other than the last is not a valid record.
    """
    path = Path(out_path)
    if not path.is_file():
        return {}, False
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")  # tail: bytes after the last newline (a partial line)
    records: dict[int, list[dict]] = {}
    for number, line in enumerate(complete.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[int(record["id"])] = record["messages"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number} is not a valid record ({error}); fix or delete the file") from error
    dropped = bool(tail.strip())
    if dropped:
        logger.warning("%s: dropping a truncated last line left by an interrupted run", path)
    if tail:
        with path.open("r+b") as handle:
            handle.truncate(len(data) - len(tail))
    return records, dropped


def _check_same_source(records: dict[int, list[dict]], conversations: Sequence[Sequence[dict]], path: Path) -> None:
    """Refuse an out_path whose records do not match the input conversations' user turns."""
    for cid, messages in records.items():
        if cid >= len(conversations):
            raise ValueError(f"{path} holds id {cid} but only {len(conversations)} conversations were given; "
                             "use a new out_path for a different input")
        written = [m["content"] for m in messages if m["role"] != "assistant"]
        given = [m["content"] for m in conversations[cid] if m["role"] != "assistant"][: len(written)]
        if written != given:
            raise ValueError(f"{path}: record {cid} does not match the given conversation {cid}; "
                             "it was written for a different input. Use a new out_path.")


def _generate(target: Any, tokenizer: Any, prompts: list[list[int]], stops: list[int], gen_kwargs: dict) -> list[str]:
    """Generate one answer per prompt (a left-padded batch) and decode it up to the first stop token."""
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    input_ids = batch["input_ids"].to(target.device)  # [B, L]
    attention_mask = batch["attention_mask"].to(target.device)  # [B, L]
    with torch.no_grad():
        output = target.generate(input_ids=input_ids, attention_mask=attention_mask, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
    answers = []
    for row in output[:, input_ids.shape[1] :].tolist():  # [B, new]
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return answers


def regenerate_conversations(
    target: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    out_path: str | os.PathLike,
    max_new_tokens: int = 256,
    batch_size: int = 4,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_prompt_tokens: int = 1024,
    seed: int = 0,
) -> Path:
    """Replace every assistant turn with the target's own answer; write/append JSONL, resumably.

    Args:
        target: the target causal LM.
        tokenizer: its tokenizer, with a chat template.
        conversations: message lists ``[{"role", "content"}]`` (from ``load_conversations``).
        out_path: JSONL output; ids already in it are skipped (a partial last line is dropped).
        max_new_tokens: cap on each answer's length (answers hitting it are kept as they are).
        batch_size: conversations generated together (left padding); a finished conversation's slot
            is refilled with the next one.
        do_sample, temperature, top_p: greedy by default; sampling uses only temperature and top-p.
        max_prompt_tokens: a conversation whose first prompt is longer is skipped; one whose later
            prompt is longer is written up to its last regenerated answer.
        seed: seeds torch's RNG for sampling (a run from scratch is reproducible; a resumed run samples
            the remaining conversations with a fresh stream).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`; the run's counts are logged (:class:`DistillStats`).
    """
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = DistillStats()
    records, stats.dropped_truncated_line = read_done_ids(path)
    _check_same_source(records, conversations, path)
    stats.already_done = len(records)
    pending = deque(i for i in range(len(conversations)) if i not in records)
    logger.info("self-distillation: %d conversations, %d already in %s, %d to do",
                len(conversations), len(records), path, len(pending))

    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, repetition_penalty=1.0)
    if do_sample:  # the target's distribution shaped only by temperature and top-p (no default top-k)
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    saved = (tokenizer.padding_side, tokenizer.pad_token)
    devices = [target.device] if target.device.type == "cuda" else []
    was_training = target.training
    target.eval()
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        stops = stop_token_ids(tokenizer, target)
        with torch.random.fork_rng(devices=devices), path.open("a", encoding="utf-8") as handle, tqdm(
            total=len(pending), desc="regenerating", unit="conv"
        ) as progress:
            torch.manual_seed(seed)
            active: list[_Conversation] = []
            while pending or active:
                while len(active) < batch_size and pending:
                    cid = pending.popleft()
                    active.append(_Conversation(cid, conversations[cid]))
                ready = _next_prompts(active, tokenizer, max_prompt_tokens, handle, stats, progress)
                active = [conv for conv, _ in ready]
                if not ready:
                    continue
                answers = _generate(target, tokenizer, [ids for _, ids in ready], stops, gen_kwargs)
                for conv, answer in zip(active, answers):
                    conv.pos += 1
                    if answer.strip():
                        conv.out.append({"role": "assistant", "content": answer})
                    else:
                        conv.stopped = True
                        stats.stopped_empty_answer += 1
    finally:
        tokenizer.padding_side, tokenizer.pad_token = saved
        target.train(was_training)
    logger.info("self-distillation done: %s", stats)
    return path


def _next_prompts(
    active: list[_Conversation], tokenizer: Any, max_prompt_tokens: int, handle: Any, stats: DistillStats, progress: Any
) -> list[tuple[_Conversation, list[int]]]:
    """Prompt token ids of the active conversations that need an answer; the others are finished here."""
    ready: list[tuple[_Conversation, list[int]]] = []
    for conv in active:
        if conv.advance():
            text = render_chat(tokenizer, conv.out, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= max_prompt_tokens:
                ready.append((conv, ids))
                continue
            if not conv.answered():
                stats.skipped_long_prompt += 1
                progress.update(1)
                continue
            stats.truncated_long_prompt += 1
        _finish(conv, handle, stats, progress)
    return ready


def _finish(conv: _Conversation, handle: Any, stats: DistillStats, progress: Any) -> None:
    """Write a finished conversation (if it has an answer) as one flushed JSONL line."""
    messages = conv.answered()
    progress.update(1)
    if not messages:
        stats.skipped_no_answer += 1
        return
    handle.write(json.dumps({"id": conv.id, "messages": messages}, ensure_ascii=False) + "\n")
    handle.flush()
    stats.written += 1


@torch.no_grad()
def greedy_continuations(target, prompts: Sequence[torch.LongTensor], max_new_tokens: int) -> list[dict[str, list[int]]]:
    """Token-level self-distillation (no tokenizer or chat template needed): the target's greedy
    continuation of each prompt `[1, P]`, as training examples with the loss on the continuation only."""
    examples = []
    for prompt in tqdm(prompts, desc="self-distil", disable=len(prompts) < 50):
        ids = target.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)[0]
        p = prompt.shape[1]
        examples.append({"input_ids": ids.tolist(), "loss_mask": [0] * p + [1] * (ids.shape[0] - p)})
    return examples
