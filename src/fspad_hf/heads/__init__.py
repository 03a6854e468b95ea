"""fspad_hf_heads: the trained heads shipped with fspad-hf, as a data-only distribution.

Installed with `pip install -e ./heads` (see the README); `fspad_hf.head.shipped` finds them through
this package, so the library wheel itself carries no weights. One folder per head (config.json,
safetensors weights, model card).
"""

from pathlib import Path

HEADS_DIR = Path(__file__).resolve().parent

