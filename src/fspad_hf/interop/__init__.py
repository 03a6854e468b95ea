"""interop/: heads in other projects' layouts: import published EAGLE-1/2 heads as EAGLE-2 heads and EAGLE-3 heads (official, SpecForge/SGLang, speculators) as EAGLE-3 heads of this package; export them to the layouts vLLM, SGLang and speculators load."""

from .eagle3_import import load_eagle3
from .eagle_export import ExportRefused, export_eagle
from .eagle_import import load_eagle

__all__ = ["load_eagle", "load_eagle3", "export_eagle", "ExportRefused"]
