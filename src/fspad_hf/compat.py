"""The one home of transformers version differences (feature detection, never version strings).

Supported: the minors in pyproject's pin (see README "Tested transformers versions"). What moved:
- 5.24 renamed the cache argument of every forward and the cache field of every `ModelOutput` from
  `past_key_values` to `cache` (the old names still work, with a deprecation warning until 5.40);
  `generate()` keeps the user's cache under the new name in `model_kwargs`.
- `GenerateDecoderOnlyOutput` follows the same rename.
- The cache layer class that holds every position (tree tokens must be removable) is `DynamicLayer`.
- 5.25 turned Hub kernels on by default in `from_pretrained` (`use_kernels=None` means on) and made the
  `kernels` package a dependency in a narrow range; a load raises when it is missing or out of range (an
  install with `--no-deps`, a registry without that release). `load_kwargs` turns them off for our loads then.

Everything else in the library calls these helpers instead of spelling a name.
"""

from __future__ import annotations

import dataclasses

from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import is_kernels_available


def _field_names(output_cls) -> set[str]:
    return {f.name for f in dataclasses.fields(output_cls)}


# Name of the cache keyword of model / attention forwards and of the cache field of model outputs.
CACHE_NAME: str = "cache" if "cache" in _field_names(BaseModelOutputWithPast) else "past_key_values"
# Every name a cache may arrive under in generate()'s model_kwargs (checked, whatever the release).
USER_CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values", "cache_params")
# The names generate() itself accepts from a caller on this release (the old one warns on >= 5.24).
GENERATE_CACHE_KWARGS: tuple[str, ...] = ("cache", "past_key_values") if CACHE_NAME == "cache" else ("past_key_values",)
# Cache field of generate()'s dict output.
GENERATE_CACHE_FIELD: str = "cache" if "cache" in _field_names(GenerateDecoderOnlyOutput) else "past_key_values"
# The full (non-sliding, non-quantized) cache layer: tree decoding needs every position removable.
FULL_CACHE_LAYER: type = DynamicLayer


def cache_kwargs(cache: Cache | None) -> dict:
    """`{<cache keyword>: cache}` for a model or attention forward call."""
    return {CACHE_NAME: cache}


def output_cache(output) -> Cache | None:
    """The cache carried by a model output (either name)."""
    return output[CACHE_NAME] if CACHE_NAME in output.keys() else None


def user_caches(model_kwargs: dict) -> list[tuple[str, object]]:
    """The caches a caller passed to generate(), with the name each came under."""
    return [(name, model_kwargs[name]) for name in USER_CACHE_NAMES if model_kwargs.get(name) is not None]


def generate_output(sequences, scores, logits, cache) -> GenerateDecoderOnlyOutput:
    """generate()'s dict output with the cache under this release's field name."""
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=logits, **{GENERATE_CACHE_FIELD: cache})


def is_full_cache_layer(layer) -> bool:
    return type(layer) is FULL_CACHE_LAYER


def load_kwargs(kwargs: dict) -> dict:
    """`from_pretrained` keywords for a head or target load: Hub kernels off when the `kernels` package is not
    usable (releases that default them on would raise), else the caller's choice or the release's default."""
    if "use_kernels" in kwargs or is_kernels_available():
        return kwargs
    return {**kwargs, "use_kernels": False}


__all__ = [
    "CACHE_NAME",
    "USER_CACHE_NAMES",
    "GENERATE_CACHE_KWARGS",
    "GENERATE_CACHE_FIELD",
    "FULL_CACHE_LAYER",
    "cache_kwargs",
    "output_cache",
    "user_caches",
    "generate_output",
    "is_full_cache_layer",
    "load_kwargs",
]
