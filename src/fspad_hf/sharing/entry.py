"""Entry point of a draft-head repo's `custom_generate/generate.py` (FSPAD / EAGLE-2 / PosS tree decoding).

Used without installing fspad-hf:

    out = target.generate(input_ids, custom_generate="<namespace>/<head-repo>", trust_remote_code=True,
                          max_new_tokens=256)

The head comes from `draft_model` (repo id, folder or loaded head), else from this file's repo
(`DEFAULT_DRAFT_MODEL`); `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` load it.
Per-call static tree: `tree_total_tokens`, `tree_depth`, `tree_top_k` (retrieval drafts and the adaptive
policy need the fspad-hf package). Statistics of the last call: `generate.last_generation_stats`.
"""

from __future__ import annotations

import functools
import os

from transformers.generation.utils import GenerationMixin

# fspad-hf: vendored-begin
# When fspad-hf builds a repo, this block is replaced by a pinned copy of the library code it needs, so
# the published file depends only on torch, transformers and safetensors (see fspad_hf.sharing.standalone).
from fspad_hf.compat import load_kwargs
from fspad_hf.head.configuration import FSPADConfig
from fspad_hf.decoding.generation import tree_generate
from fspad_hf.head.modeling import FSPADDraftModel
# fspad-hf: vendored-end

DEFAULT_DRAFT_MODEL: str | None = None  # fspad-hf: default-draft-model
HUB_LOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
_LOADED_HEADS: dict[tuple, FSPADDraftModel] = {}


def _safetensors_from_pretrained(cls, source, *model_args, **kwargs):
    """Stand-in loader of the generated file (fspad_hf's checked loader is left out of it): transformers'
    own `from_pretrained`, reading config.json + safetensors weights only, never a pickle checkpoint."""
    if kwargs.get("use_safetensors") is False:
        raise ValueError("FSPAD heads load from safetensors only (use_safetensors=False would allow pickle files).")
    return super(FSPADDraftModel, cls).from_pretrained(source, *model_args, **load_kwargs({**kwargs, "use_safetensors": True}))


class RetrievalDrafter:
    """Stand-in of the generated file, which leaves retrieval drafting out (the package has it)."""

    def __init__(self, *args, **kwargs):
        raise ValueError("Retrieval drafts (retrieval_branches > 0) need the fspad-hf package: pip install fspad-hf, "
                         "then generate(..., assistant_model=head, retrieval_branches=N).")


if "from_pretrained" not in vars(FSPADDraftModel):  # the generated file (the library loader is left out)
    FSPADDraftModel.from_pretrained = classmethod(_safetensors_from_pretrained)


def load_draft_model(source: str | os.PathLike, **hub_kwargs) -> FSPADDraftModel:
    """Load (once per source and revision) the head from a repo id or a local folder, on CPU."""
    key = (str(source), hub_kwargs.get("revision"))
    if key not in _LOADED_HEADS:
        _LOADED_HEADS[key] = FSPADDraftModel.from_pretrained(str(source), use_safetensors=True, **hub_kwargs).eval()
    return _LOADED_HEADS[key]


def as_vendored_head(head) -> FSPADDraftModel:
    """A head of this file's own class: `head` itself, or a copy of a head built by another fspad-hf copy."""
    if isinstance(head, FSPADDraftModel):
        return head
    config = getattr(head, "config", None)
    if getattr(config, "model_type", None) != "fspad" or not hasattr(head, "state_dict"):
        raise TypeError(
            f"draft_model must be an FSPAD draft head (or its repo id / folder), got {type(head).__name__}. "
            "A PEFT-wrapped head must be merged first (merge_and_unload())."
        )
    clone = FSPADDraftModel(FSPADConfig.from_dict(config.to_dict()))
    clone.load_state_dict(head.state_dict())
    return clone.to(device=head.device, dtype=head.dtype).eval()


def resolve_draft_model(source, model, hub_kwargs: dict) -> FSPADDraftModel:
    """The head to decode with, on the target's device and in its dtype."""
    source = DEFAULT_DRAFT_MODEL if source is None else source
    if source is None:
        raise ValueError(
            "This custom_generate needs the draft head: pass draft_model='<repo id or folder of the head>' to generate()."
        )
    head = load_draft_model(source, **hub_kwargs) if isinstance(source, (str, os.PathLike)) else as_vendored_head(source)
    param = next(model.parameters())
    return head.to(device=param.device, dtype=param.dtype)


def generate(model, draft_model=None, assistant_model=None, streamer=None, **kwargs):
    """`generate()` of `model` with tree speculative decoding by the FSPAD head (lossless; batch size 1)."""
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_LOAD_KWARGS if k in kwargs}
    if kwargs.setdefault("tree_policy", "static") != "static":
        raise ValueError("tree_policy='adaptive' needs the fspad-hf package (pip install fspad-hf); this file "
                         "drafts the static tree only.")
    if kwargs.setdefault("retrieval_branches", 0):
        raise ValueError("retrieval_branches needs the fspad-hf package (pip install fspad-hf); this file drafts "
                         "the head's static tree only (retrieval_branches=0).")
    if draft_model is None and assistant_model is not None:
        draft_model = assistant_model  # accept the head under transformers' usual name too
    head = resolve_draft_model(draft_model, model, hub_kwargs)
    decode = tree_generate
    if streamer is not None:  # transformers does not pass `streamer` to a custom decoding callable
        prompt = kwargs.get("inputs", kwargs.get("input_ids"))
        if prompt is not None:
            streamer.put(prompt.cpu())
        decode = functools.partial(tree_generate, streamer=streamer)
    try:
        return GenerationMixin.generate(model, custom_generate=decode, draft_model=head, **kwargs)
    finally:
        generate.last_generation_stats = getattr(head, "last_generation_stats", None)


generate.last_generation_stats = None
