"""fspad_hf: lossless tree speculative decoding for Hugging Face transformers with FSPAD draft heads.

`import fspad_hf` registers the `fspad` model type with the Auto classes and lets a stock
`target.generate(..., assistant_model=head)` run tree speculative decoding when `head` is an
`FSPADDraftModel` (other assistants keep transformers' own behaviour).

Rooms (one folder per role; dependencies point downwards):
    head/        the draft head: config + method table, modeling, drafting interface, loading, storage
    decoding/    tree drafting, verification, KV-cache surgery, the generate() loop and route
    training/    chat data, self-distillation, features, losses, the Trainer
    evaluation/  benchmark, demo, the `evaluate` metric
    sharing/     Hub repos, model cards, the standalone custom_generate file
    compat.py, masks.py, integrity.py, targets.py, machine.py: shared low-level pieces
"""

import importlib

from transformers import AutoConfig, AutoModel

from .decoding.generation import tree_generate
from .decoding.route import install as _install_generate_route
from .decoding.settings import TreeSettings
from .decoding.stats import GenerationStats
from .head.configuration import FSPADConfig
from .head.modeling import FSPADDraftModel, FSPADOutput
from .sharing import hub as _hub  # noqa: F401  (installs head.push_to_hub = the full repo route)

AutoConfig.register("fspad", FSPADConfig, exist_ok=True)
AutoModel.register(FSPADConfig, FSPADDraftModel, exist_ok=True)
_install_generate_route()

__version__ = "0.1.0"

# Heavier names load on first use (the Trainer pulls in accelerate and datasets machinery).
_LAZY = {
    "FSPADTrainer": "training.trainer",
    "FSPADTrainingArguments": "training.trainer",
    "select_draft_vocab": "training.trainer",
    "init_from_head": "training.trainer",
    "finish_distributed": "training.trainer",
    "ChatDataset": "training.data",
    "load_conversations": "training.data",
    "regenerate_conversations": "training.distill",
    "load_target": "targets",
    "shipped_heads": "head.shipped",
    "push_head": "sharing.hub",
    "build_model_card": "sharing.hub",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fspad_hf' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FSPADConfig",
    "FSPADDraftModel",
    "FSPADOutput",
    "TreeSettings",
    "GenerationStats",
    "tree_generate",
    "__version__",
    *_LAZY,
]
