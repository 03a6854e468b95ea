"""Route `generate(..., assistant_model=<FSPADDraftModel>)` to tree decoding.

transformers' own assisted decoding verifies a single chain of candidates; a draft *tree* needs its own
loop. `install()` wraps `GenerationMixin.generate` once: when `assistant_model` is an FSPAD head, the
call is forwarded to stock `generate` with `custom_generate=tree_generate` (so all of generate's
preparation - generation config, logits processors, stopping criteria - is the stock code); any other
assistant, or none, goes to the original method untouched.
"""

from __future__ import annotations

import functools

from transformers.generation.utils import GenerationMixin

from .generation import tree_generate
from .settings import ALL_KEYWORDS, TreeSettings
from ..head.modeling import FSPADDraftModel, unwrap_head

TREE_KWARGS = tuple(ALL_KEYWORDS)  # tree shape + retrieval keywords
_ORIGINAL = GenerationMixin.generate


def _as_head(assistant_model) -> FSPADDraftModel | None:
    """The FSPAD head behind `assistant_model` (also through a PEFT wrapper with live adapters)."""
    try:
        return unwrap_head(assistant_model) if assistant_model is not None else None
    except TypeError:
        return None


def _fspad_generate(self, *args, assistant_model=None, streamer=None, **kwargs):
    head = _as_head(assistant_model)
    if head is None:
        if kwargs.get("custom_generate") is None and any(k in kwargs for k in TREE_KWARGS):
            raise ValueError(
                f"{TREE_KWARGS} are only valid with assistant_model=<FSPADDraftModel>, or with "
                "custom_generate=fspad_hf.tree_generate (retrieval_branches=N without a head: head-free drafting)."
            )
        return _ORIGINAL(self, *args, assistant_model=assistant_model, streamer=streamer, **kwargs)
    if kwargs.get("custom_generate") is not None:
        raise ValueError("Pass either assistant_model=<FSPADDraftModel> or custom_generate, not both.")
    if kwargs.get("prompt_lookup_num_tokens") is not None:
        raise ValueError("prompt_lookup_num_tokens cannot be combined with an FSPAD assistant_model.")
    tree_kwargs = TreeSettings.pop_keywords(kwargs)
    decode = functools.partial(tree_generate, draft_model=head, **tree_kwargs)
    if streamer is not None:
        _put_prompt(streamer, args, kwargs)
        decode = functools.partial(decode, streamer=streamer)
    return _ORIGINAL(self, *args, custom_generate=decode, **kwargs)


def _put_prompt(streamer, args, kwargs) -> None:
    """Stock generate() shows the prompt to the streamer first; keep that behaviour."""
    prompt = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    if prompt is not None:
        streamer.put(prompt.cpu())


def install() -> None:
    """Idempotently wrap `GenerationMixin.generate` (done by `import fspad_hf`)."""
    if getattr(GenerationMixin.generate, "_fspad_wrapped", False):
        return
    wrapped = functools.wraps(_ORIGINAL)(_fspad_generate)
    wrapped._fspad_wrapped = True
    GenerationMixin.generate = wrapped


__all__ = ["install", "TREE_KWARGS"]
