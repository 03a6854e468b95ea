"""Tokenise a chat with the tokenizer's own chat template and a loss mask on assistant tokens only.

The technique is template-agnostic (no template is hard-coded):

1. Render the whole conversation once as text ``T`` (``apply_chat_template(..., tokenize=False)``).
2. For every assistant turn ``i`` render the prefix ``messages[:i]`` with ``add_generation_prompt=True``
   (text ``P``) and ``messages[:i + 1]`` without it (text ``F``). Then ``T[len(P):len(F)]`` is what the
   template emits for that reply *after* the generation prompt: the reply text and the end-of-turn
   markup (e.g. ``Hello<|im_end|>\\n``).
3. Tokenise ``T`` once (fast tokenizer, ``add_special_tokens=False``, ``return_offsets_mapping=True``)
   and set ``loss_mask = 1`` on tokens that start inside the reply text, plus the tokens after it up to
   and including the first special token (the end-of-turn token such as ``<|im_end|>`` / ``<|eot_id|>``),
   which the draft head must learn to predict. Headers, separators and user/system turns stay 0.

``loss_mask[t] == 1`` means token ``t`` is a training target (the model predicts it from positions < t).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

_FIX_HINT = (
    "Set `tokenizer.chat_template` to a Jinja template that renders assistant turns and supports "
    "`add_generation_prompt` (e.g. copy the instruct model's template)."
)


def render_chat(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """Render ``messages`` to text with the tokenizer's chat template (no tokenisation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"The tokenizer has no chat template, so assistant turns cannot be located. {_FIX_HINT}")
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise ValueError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str.")
    return text


def _content_span(turn_text: str, content: str) -> tuple[int, int] | None:
    """Character span of the reply ``content`` inside the rendered turn text, or None if not found.

    Most templates start the turn text with the content itself; otherwise (templates that ``trim`` the
    content or prepend markup such as an empty think block) the last occurrence is taken, because
    anything a template adds before the reply is header markup.
    """
    for candidate in (content, content.strip()):
        if turn_text.startswith(candidate):
            return 0, len(candidate)
        if candidate:
            idx = turn_text.rfind(candidate)
            if idx >= 0:
                return idx, idx + len(candidate)
    return None


def assistant_char_spans(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """Render the conversation and locate its assistant replies.

    Returns:
        ``(text, spans)`` where ``text`` is the full rendering and each span is
        ``(content_start, content_end, turn_end)`` in characters of ``text``: the reply is
        ``text[content_start:content_end]``, and ``text[content_end:turn_end]`` is the template's
        end-of-turn markup for that reply.

    Raises:
        ValueError: no chat template, or a template whose renderings are not prefixes of each other
            or that renders nothing for an assistant turn.
    """
    text = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        with_turn = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if len(with_turn) <= len(prompt) or not with_turn.startswith(prompt):
            raise ValueError(
                "The chat template gives no extra text for an assistant turn after the generation prompt "
                f"(turn {i}), so assistant tokens cannot be masked. {_FIX_HINT}"
            )
        if not text.startswith(with_turn):
            raise ValueError(
                "The chat template renders earlier turns differently once later turns are added "
                f"(turn {i}); the renderings must be prefixes of each other. {_FIX_HINT}"
            )
        turn_text = with_turn[len(prompt) :]
        found = _content_span(turn_text, message["content"])
        if found is None:
            logger.debug("assistant content of turn %d not found verbatim; masking the whole turn", i)
            found = (0, len(turn_text.rstrip()))
        start, end = found
        spans.append((len(prompt) + start, len(prompt) + end, len(with_turn)))
    return text, spans


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of all special tokens, including added tokens flagged ``special``."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


def _mark_turn(
    mask: list[int],
    ids: list[int],
    starts: list[int],
    span: tuple[int, int, int],
    text: str,
    specials: set[int],
) -> None:
    """Set ``mask`` to 1 on one reply's tokens and its end-of-turn token(s), in place.

    ``starts`` are the tokens' start characters (non-decreasing). A token belongs to the reply when it
    starts inside the reply text; after the reply, tokens up to and including the first special token
    (the end-of-turn token) are kept. Templates without a special end token keep the non-blank markup.
    """
    content_start, content_end, turn_end = span
    first, middle, last = (bisect_left(starts, c) for c in (content_start, content_end, turn_end))
    for t in range(first, middle):
        mask[t] = 1
    tail = range(middle, last)
    end_token = next((t for t in tail if ids[t] in specials), None)
    if end_token is not None:
        for t in range(middle, end_token + 1):
            mask[t] = 1
        return
    stripped_end = len(text[:turn_end].rstrip())
    for t in tail:
        if starts[t] < stripped_end:
            mask[t] = 1


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict], max_length: int) -> dict[str, list[int]]:
    """Tokenise a conversation with its chat template and a loss mask that is 1 on assistant tokens.

    Args:
        tokenizer: a *fast* Hugging Face tokenizer with a ``chat_template``.
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
        max_length: keep at most this many tokens (right truncation).

    Returns:
        ``{"input_ids": [...], "loss_mask": [...]}`` of equal length (<= ``max_length``).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenize_conversation needs a fast tokenizer (offset mappings); load it with use_fast=True.")
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    starts = [int(start) for start, _ in encoding["offset_mapping"]]
    mask = [0] * len(ids)
    specials = special_token_ids(tokenizer)
    for span in spans:
        _mark_turn(mask, ids, starts, span, text, specials)
    return {"input_ids": ids[:max_length], "loss_mask": mask[:max_length]}


def conversation_windows(example: dict[str, list[int]], max_length: int, min_context: int | None = None) -> list[dict[str, list[int]]]:
    """Cut one tokenised conversation (untruncated) into windows of at most `max_length` tokens so that
    every assistant token is a training target in exactly one window, with its preceding context.

    Right truncation keeps only the first `max_length` tokens, so the later turns of a long chat are
    never learned. Here each window starts at most `min_context` (default `max_length // 2`) tokens
    before the first assistant token not yet covered and ends `max_length` tokens later; tokens before
    that first uncovered one (already targets of an earlier window) are context only (loss 0).
    """
    ids, mask = example["input_ids"], example["loss_mask"]
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    context = max_length // 2 if min_context is None else min(min_context, max_length - 1)
    windows, covered = [], 0
    while True:
        first = next((t for t in range(covered, len(mask)) if mask[t]), None)  # first uncovered target
        if first is None:
            return windows
        start = max(0, first - context)
        end = min(len(ids), start + max_length)
        window_mask = [0] * (first - start) + mask[first:end]
        windows.append({"input_ids": ids[start:end], "loss_mask": window_mask})
        covered = end
