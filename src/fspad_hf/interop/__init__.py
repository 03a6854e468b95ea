"""interop/: heads in other projects' layouts: import published EAGLE-1/2 heads as EAGLE-2 heads of this package, export EAGLE-2 heads to the layout vLLM and SGLang load."""

from .eagle_export import ExportRefused, export_eagle
from .eagle_import import load_eagle

__all__ = ["load_eagle", "export_eagle", "ExportRefused"]
