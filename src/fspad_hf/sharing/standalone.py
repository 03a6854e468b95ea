"""Build the `custom_generate/` folder of a shared head repo: a self-contained, pinned copy of the decoding.

`build_generate_py()` concatenates the library modules that tree decoding needs (found by following
the relative imports of `generation.py`, dependencies first) and the entry point `entry.py` into one
file that imports only torch, transformers and the standard library. Users without fspad-hf run it
through transformers' own hook:

    target.generate(ids, custom_generate="<repo>", trust_remote_code=True)

The folder also holds the package copy of the model-card template (`fspad_head_card.md.j2`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent
PACKAGE_DIR = TEMPLATE_DIR.parent
ENTRY_FILE = TEMPLATE_DIR / "entry.py"
CARD_TEMPLATE_NAME = "fspad_head_card.md.j2"
ROOT_MODULES = ("generation",)  # tree decoding; its relative imports pull in the head and its config
VENDOR_BEGIN = "# fspad-hf: vendored-begin"
VENDOR_END = "# fspad-hf: vendored-end"
DEFAULT_MARKER = "# fspad-hf: default-draft-model"
RUNTIME_REQUIREMENTS = ("torch", "transformers", "safetensors", "huggingface-hub")
FALLBACK_REQUIREMENTS = ("torch>=2.4", "transformers<5.30", "transformers>=5.20", "safetensors>=0.4", "huggingface-hub>=1.0")


class VendoringError(RuntimeError):
    """The library modules cannot be concatenated safely (the message names the module and the cause)."""


def _relative_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.level]


def _check_no_nested_relative_imports(name: str, tree: ast.Module) -> None:
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in top:
            raise VendoringError(
                f"fspad_hf/{name}.py has a relative import inside a function (line {node.lineno}); the "
                "custom_generate copy needs module-level imports. Move it to the top of the module."
            )


def _parse(name: str) -> ast.Module:
    path = PACKAGE_DIR / f"{name}.py"
    if not path.is_file():
        raise VendoringError(f"fspad_hf/{name}.py not found (needed by the custom_generate copy).")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def vendored_module_names(roots: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """Library modules needed by `roots`, each after the modules it imports from (depth-first order)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise VendoringError(f"circular relative import through fspad_hf/{name}.py")
        visiting.add(name)
        tree = _parse(name)
        _check_no_nested_relative_imports(name, tree)
        for node in _relative_imports(tree):
            if node.level != 1 or not node.module:
                raise VendoringError(f"fspad_hf/{name}.py: only `from .module import x` is supported (line {node.lineno}).")
            visit(node.module)
        visiting.discard(name)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def _is_dropped(node: ast.stmt) -> bool:
    """Statements left out of the copy: future imports, relative imports, `__all__`, the module docstring."""
    if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
        return True
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
        return True
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _strip(label: str, source: str) -> tuple[str, dict[str, str]]:
    """Module source without dropped statements (comments kept) and `{top-level name: its source}`."""
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    defined: dict[str, str] = {}
    aliases: list[str] = []
    for node in tree.body:
        if _is_dropped(node):
            drop.update(range(node.lineno - 1, node.end_lineno))
            if isinstance(node, ast.ImportFrom) and node.level:
                aliases += [f"{a.asname} = {a.name}" for a in node.names if a.asname and a.asname != a.name]
            continue
        for defined_name in _defined_names(node):
            defined[defined_name] = ast.get_source_segment(source, node) or ""
    kept = [line for i, line in enumerate(lines) if i not in drop]
    body = "\n".join(aliases + kept).strip("\n")
    return f"# {'-' * 30} {label}\n{body}\n", defined


def _merge_definitions(seen: dict[str, tuple[str, str]], module: str, defined: dict[str, str]) -> None:
    for name, src in defined.items():
        if name in seen and seen[name][1] != src:
            raise VendoringError(
                f"`{name}` is defined differently in fspad_hf/{seen[name][0]}.py and fspad_hf/{module}.py; the "
                "custom_generate copy puts both modules in one file. Rename one of them."
            )
        seen[name] = (module, src)


def _entry_source(default_draft_model: str | None) -> str:
    text = ENTRY_FILE.read_text(encoding="utf-8")
    start, end = text.index(VENDOR_BEGIN), text.index(VENDOR_END) + len(VENDOR_END)
    text = text[:start] + "# (vendored fspad_hf modules above)" + text[end:]
    out = []
    for line in text.splitlines():
        if line.rstrip().endswith(DEFAULT_MARKER):
            line = f"DEFAULT_DRAFT_MODEL: str | None = {default_draft_model!r}  {DEFAULT_MARKER}"
        out.append(line)
    return "\n".join(out) + "\n"


def _fspad_version() -> str:
    try:
        return importlib.metadata.version("fspad-hf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_generate_py(default_draft_model: str | None = None) -> str:
    """The text of `custom_generate/generate.py`: vendored library modules + the entry point.

    default_draft_model: repo id (or folder) the head is loaded from when `generate()` gets no `draft_model`.
    """
    names = vendored_module_names()
    seen: dict[str, tuple[str, str]] = {}
    sections = []
    for name in names:
        text, defined = _strip(f"fspad_hf/{name}.py", (PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8"))
        _merge_definitions(seen, name, defined)
        sections.append(text)
    entry = _entry_source(default_draft_model)
    entry_text, entry_defined = _strip("fspad_hf/custom_generate_template/entry.py", entry)
    _merge_definitions(seen, "custom_generate_template/entry", entry_defined)
    entry_doc = ast.get_docstring(ast.parse(entry)) or ""
    header = (
        f'"""{entry_doc}\n\nGenerated by fspad-hf {_fspad_version()} from fspad_hf modules: {", ".join(names)}.\n'
        'Do not edit: rebuild it with `fspad_hf.sharing.hub.save_head_repo` instead.\n"""\n\n'
        "from __future__ import annotations\n\n"
    )
    text = header + "\n\n".join(sections) + "\n\n" + entry_text
    check_standalone(text)
    return text


def check_standalone(text: str) -> None:
    """Raise if the generated file does not compile or still imports fspad_hf."""
    tree = ast.parse(text)
    compile(tree, "custom_generate/generate.py", "exec")
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""] if not node.level else ["." + (node.module or "")]
        bad = [m for m in mods if m.startswith((".", "fspad_hf"))]
        if bad:
            raise VendoringError(f"custom_generate/generate.py still imports {bad} (line {node.lineno}).")


def requirements_txt() -> str:
    """`custom_generate/requirements.txt`: the installed fspad-hf's pins for the runtime packages.

    One constraint per line: transformers' checker reads only the first constraint of a line.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        reqs = importlib.metadata.requires("fspad-hf") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    lines, names = [], set()
    for text in reqs:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        name = req.name.lower().replace("_", "-")
        if req.marker is not None or name not in RUNTIME_REQUIREMENTS:
            continue
        names.add(name)
        lines += sorted(f"{name}{spec.operator}{spec.version}" for spec in req.specifier) or [name]
    if names != set(RUNTIME_REQUIREMENTS):
        lines = list(FALLBACK_REQUIREMENTS)
    return "# Checked by transformers before it runs custom_generate/generate.py\n" + "\n".join(lines) + "\n"


def card_template_path() -> Path:
    """The model-card template: the repo's `model_cards/` copy in a source checkout, else the package copy."""
    checkout = PACKAGE_DIR.parent.parent / "model_cards" / CARD_TEMPLATE_NAME  # <repo>/src/fspad_hf -> <repo>
    if PACKAGE_DIR.parent.name == "src" and checkout.is_file():
        return checkout
    return TEMPLATE_DIR / CARD_TEMPLATE_NAME


__all__ = [
    "VendoringError",
    "build_generate_py",
    "card_template_path",
    "check_standalone",
    "requirements_txt",
    "vendored_module_names",
]
