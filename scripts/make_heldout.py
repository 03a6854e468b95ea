#!/usr/bin/env python
"""Held-out prompts for recipe selection (issue 13 item 3), in Spec-Bench question format.

    python scripts/make_heldout.py            # writes data/heldout/sharegpt-heldout.jsonl

40 first user turns of packaged ShareGPT V3 conversations with index >= 17000 (the training scripts only
read conversations < 17000), 20-1500 characters, duplicates dropped, evenly spaced over the eligible
ones (deterministic: no randomness). Never Spec-Bench or any other evaluation set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fspad_hf.training.data import load_conversations

FIRST_HELDOUT = 17000


def first_user_turn(conversation: list[dict]) -> str | None:
    return next((m["content"] for m in conversation if m["role"] == "user"), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="data/heldout/sharegpt-heldout.jsonl")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--min_chars", type=int, default=20)
    p.add_argument("--max_chars", type=int, default=1500)
    a = p.parse_args()
    conversations, stats = load_conversations(None)  # the packaged ShareGPT V3 (`sharegpt` on the CLI)
    print(stats.summary())
    if len(conversations) <= FIRST_HELDOUT:
        raise SystemExit(f"only {len(conversations)} conversations: nothing at index >= {FIRST_HELDOUT}")
    eligible, seen = [], set()
    for index in range(FIRST_HELDOUT, len(conversations)):
        text = first_user_turn(conversations[index])
        if text is None or not a.min_chars <= len(text.strip()) <= a.max_chars or text.strip() in seen:
            continue
        seen.add(text.strip())
        eligible.append((index, text.strip()))
    if len(eligible) < a.count:
        raise SystemExit(f"only {len(eligible)} eligible first turns")
    picked = [eligible[i * len(eligible) // a.count] for i in range(a.count)]
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for n, (index, text) in enumerate(picked):
            f.write(json.dumps({"question_id": n, "category": "sharegpt-heldout", "turns": [text],
                                "sharegpt_index": index}, ensure_ascii=False) + "\n")
    print(f"wrote {len(picked)} questions to {out} (from {len(eligible)} eligible first turns of conversations "
          f"{FIRST_HELDOUT}-{len(conversations) - 1})")


if __name__ == "__main__":
    main()
