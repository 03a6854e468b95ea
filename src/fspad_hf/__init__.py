"""fspad_hf: lossless tree speculative decoding for Hugging Face transformers with FSPAD draft heads.

`import fspad_hf` registers the `fspad` model type with the Auto classes and lets a stock
`target.generate(..., assistant_model=head)` run tree speculative decoding when `head` is an
`FSPADDraftModel` (other assistants keep transformers' own behaviour).
"""

from transformers import AutoConfig, AutoModel

from .configuration_fspad import FSPADConfig
from .candidate_generator import FSPADCandidateGenerator, TreeSettings
from .generation import tree_generate
from .modeling_fspad import FSPADDraftModel, FSPADOutput
from . import hub as _hub  # noqa: F401  (installs head.push_to_hub = the full repo route)
from .patch import install as _install_generate_route
from .stats import GenerationStats

AutoConfig.register("fspad", FSPADConfig, exist_ok=True)
AutoModel.register(FSPADConfig, FSPADDraftModel, exist_ok=True)
_install_generate_route()

__version__ = "0.1.0"

__all__ = [
    "FSPADConfig",
    "FSPADDraftModel",
    "FSPADOutput",
    "FSPADCandidateGenerator",
    "TreeSettings",
    "GenerationStats",
    "tree_generate",
    "__version__",
]
