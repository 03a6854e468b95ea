"""Build the `custom_generate/` folder of a shared head repo: a self-contained, pinned copy of the decoding.

`build_generate_py()` merges what tree decoding needs into one file that imports only torch,
transformers, safetensors, huggingface_hub and the standard library. Users without fspad-hf run it
through transformers' own hook:

    target.generate(ids, custom_generate="<repo>", trust_remote_code=True)

How the copy is made:
- Modules are found by following relative imports (`from .tree import x`, `from ..head.modeling import
  y`, `from ..compat import z`) from `decoding/generation.py` and from the fspad_hf imports of the
  entry point `entry.py`; they are written dependencies first, all in one namespace (so a top-level
  name must mean the same thing in every module that defines it).
- Only what is reachable from the entry point is kept: a top-level definition is copied when a kept
  statement names it, an import when a kept statement uses it (imports are merged at the top).
- A definition (or a method inside a class) marked with a `# standalone: omit` comment on the line
  before it (or at the end of its `def`/`class` line) is left out: training, checked loading, int8
  storage, shipped heads, Hub cards. Where an omitted top-level name is still used, `entry.py` must
  define a stand-in under that name.
- Module, class and function docstrings of the library modules are dropped; comments are kept.

The model-card template `fspad_head_card.md.j2` sits next to this module (one file: a link to the
repo's `model_cards/` copy in a source checkout).
"""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import logging
import re
from pathlib import Path

from .vendoring import (
    ALLOWED_IMPORTS,
    DEFINITIONS,
    ENTRY_MODULE,
    OMIT_MARKER,
    Binding,
    Module,
    VendoringError,
    defined_names,
    is_docstring,
    make_plan,
    stdlib_names,
    walk,
)

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent  # fspad_hf/sharing: entry.py and the model-card template
ENTRY_FILE = TEMPLATE_DIR / "entry.py"
CARD_TEMPLATE_NAME = "fspad_head_card.md.j2"
VENDOR_BEGIN = "# fspad-hf: vendored-begin"
VENDOR_END = "# fspad-hf: vendored-end"
DEFAULT_MARKER = "# fspad-hf: default-draft-model"
RUNTIME_REQUIREMENTS = ("torch", "transformers", "safetensors", "huggingface-hub")
FALLBACK_REQUIREMENTS = ("torch>=2.4", "transformers<5.30", "transformers>=5.20", "safetensors>=0.4", "huggingface-hub>=1.0")
# ---------------------------------------------------------------------------- writing it out
def _statement_text(mod: Module, node: ast.stmt) -> str:
    """Source of a kept top-level statement: its leading comments, minus omitted members and docstrings."""
    lines = mod.lines
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while start > 0 and lines[start - 1].startswith("#") and not lines[start - 1].startswith(OMIT_MARKER):
        start -= 1  # comments right above, at column 0, belong to the statement
    edits: dict[int, str | None] = {}  # 0-based line -> replacement (None: delete)
    omitted = mod.omitted_members(node)
    for member in omitted:
        first = min([member.lineno] + [d.lineno for d in member.decorator_list]) - 1
        if first > 0 and lines[first - 1].strip().startswith(OMIT_MARKER):
            first -= 1
        edits.update(dict.fromkeys(range(first, member.end_lineno)))
    omitted_ids = {id(m) for m in omitted}
    for block in walk(node, omitted):
        if not isinstance(block, DEFINITIONS):
            continue
        removed = [item for item in block.body if id(item) in omitted_ids]
        doc = block.body[0]
        if not mod.keep_docstrings and is_docstring(doc) and _own_lines(lines, doc):
            edits.update(dict.fromkeys(range(doc.lineno - 1, doc.end_lineno)))
            removed.append(doc)
        if removed and len(removed) == len(block.body):  # nothing left: the body needs a statement
            colon = block.body[0].lineno - 2  # the `def ...:` / `class ...:` line (its last line)
            signature = lines[colon].rstrip()
            if edits.get(colon, "") is not None and signature.endswith(":") and not signature.lstrip().startswith("#"):
                edits[colon] = signature + " ..."
            else:
                edits[min(item.lineno for item in removed) - 1] = re.match(r"\s*", lines[doc.lineno - 1]).group(0) + "..."
    protected = _string_lines(node)
    out: list[tuple[int, str]] = []
    for i in range(start, node.end_lineno):
        line = edits[i] if i in edits else lines[i]
        if line is None:
            continue
        if not line.strip() and i not in protected and out:
            j, previous = out[-1]
            if not previous.strip() or previous.rstrip().endswith(":"):
                continue  # one blank line at most, none right after a `def`/`class` line
            if previous.lstrip().startswith("#") and lines[j + 1].strip():
                continue  # a comment that was right above a left-out member stays right above what follows
        out.append((i, line))
    while out and (not out[-1][1].strip() or out[-1][1].lstrip().startswith("#")):
        out.pop()  # blank lines and comments that were above left-out members at the end of a class
    return "\n".join(line for _, line in out)


def _own_lines(lines: list[str], node: ast.stmt) -> bool:
    """Whether `node` is alone on its lines (so deleting them deletes nothing else)."""
    before = lines[node.lineno - 1][: node.col_offset]
    after = lines[node.end_lineno - 1][node.end_col_offset :].strip()
    return not before.strip() and (not after or after.startswith("#"))


def _string_lines(node: ast.stmt) -> set[int]:
    """0-based lines inside multi-line string literals (never edited)."""
    out: set[int] = set()
    for inner in ast.walk(node):
        if isinstance(inner, (ast.Constant, ast.JoinedStr)) and inner.end_lineno and inner.end_lineno > inner.lineno:
            out.update(range(inner.lineno, inner.end_lineno))
    return out


def _import_block(imports: dict[str, list[Binding]], width: int = 110) -> str:
    """The merged imports: standard library first, then the third-party packages; `import x` before `from x`."""
    groups: dict[bool, list[str]] = {True: [], False: []}
    grouped: dict[str, set[str]] = {}
    for bindings in imports.values():
        for b in bindings:
            if b.name is None:
                groups[b.module.split(".")[0] in stdlib_names()].append(b.text)
            else:
                grouped.setdefault(b.module, set()).add(b.text)
    groups = {stdlib: sorted(set(lines)) for stdlib, lines in groups.items()}
    for module in sorted(grouped):
        head, current = f"from {module} import ", []
        for name in sorted(grouped[module], key=str.lower):
            if current and len(head) + len(", ".join([*current, name])) > width:
                groups[module.split(".")[0] in stdlib_names()].append(head + ", ".join(current))
                current = []
            current.append(name)
        groups[module.split(".")[0] in stdlib_names()].append(head + ", ".join(current))
    return "\n\n".join("\n".join(groups[stdlib]) for stdlib in (True, False) if groups[stdlib])


def _merge_definitions(seen: dict[str, tuple[str, str]], label: str, name: str, src: str) -> bool:
    """Record `name`; False if an identical definition is already in the copy (then it is not repeated)."""
    if name in seen:
        if seen[name][1] != src:
            raise VendoringError(
                f"`{name}` is defined differently in {seen[name][0]} and {label}; the custom_generate copy puts both "
                "modules in one file. Rename one of them."
            )
        return False
    if hasattr(builtins, name):
        raise VendoringError(f"{label} defines `{name}`, a builtin name: in the merged copy it would shadow the builtin "
                             "for every module. Rename it.")
    seen[name] = (label, src)
    return True


def _join(blocks: list[tuple[ast.stmt | None, str]]) -> str:
    """Statements separated PEP 8 style: two blank lines around definitions, one otherwise."""
    out = ""
    previous = None
    for node, text in blocks:
        if out:
            wide = isinstance(node, DEFINITIONS) or isinstance(previous, DEFINITIONS)
            out += "\n\n\n" if wide else "\n\n"
        out += text
        previous = node
    return out


def _entry_module(default_draft_model: str | None) -> Module:
    text = ENTRY_FILE.read_text(encoding="utf-8")
    if VENDOR_BEGIN not in text or VENDOR_END not in text:
        raise VendoringError(f"{ENTRY_FILE} lacks the `{VENDOR_BEGIN}` / `{VENDOR_END}` block.")
    out = []
    for line in text.splitlines():
        if line.rstrip().endswith(DEFAULT_MARKER):
            line = f"DEFAULT_DRAFT_MODEL: str | None = {default_draft_model!r}  {DEFAULT_MARKER}"
        out.append(line)
    return Module(ENTRY_MODULE, "\n".join(out) + "\n", keep_docstrings=True)


def _entry_text(entry: Module) -> str:
    """The entry point as written, without its docstring, imports and vendored block (merged above)."""
    lines = entry.lines
    drop: set[int] = set()
    for node in entry.dropped:
        drop.update(range(node.lineno - 1, node.end_lineno))
    begin = next(i for i, line in enumerate(lines) if line.strip() == VENDOR_BEGIN)
    end = next(i for i, line in enumerate(lines) if line.strip() == VENDOR_END)
    drop.update(range(begin, end + 1))
    out: list[str] = []
    for i, line in enumerate(lines):
        if i == begin:
            out.append("# (vendored fspad_hf modules above)")
        elif i not in drop and (line.strip() or not out or any(x.strip() for x in out[-2:])):
            out.append(line)  # at most two blank lines in a row where statements were dropped
    return "\n".join(out).strip("\n") + "\n"


def _fspad_version() -> str:
    try:
        return importlib.metadata.version("fspad-hf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def vendored_module_names() -> list[str]:
    """Library modules (dotted, below fspad_hf) that contribute to the copy, each after the modules it imports from."""
    return make_plan(_entry_module(None)).order


def build_generate_py(default_draft_model: str | None = None) -> str:
    """The text of `custom_generate/generate.py`: the needed library code + the entry point.

    default_draft_model: repo id (or folder) the head is loaded from when `generate()` gets no `draft_model`.
    """
    entry = _entry_module(default_draft_model)
    plan = make_plan(entry)
    seen: dict[str, tuple[str, str]] = {}
    sections = []
    for name in plan.order:
        mod = plan.modules[name]
        blocks: list[tuple[ast.stmt | None, str]] = [(None, line) for line in plan.aliases.get(name, [])]
        for alias in plan.aliases.get(name, []):
            _merge_definitions(seen, mod.label, alias.split(" = ")[0], alias)
        for node in plan.kept[name]:
            fresh = [_merge_definitions(seen, mod.label, n, ast.get_source_segment(mod.source, node) or "")
                     for n in defined_names(node)]
            if fresh and not any(fresh):
                continue  # the same definition already came from an earlier module
            blocks.append((node, _statement_text(mod, node)))
        sections.append(f"# {'-' * 30} {mod.label}\n{_join(blocks)}")
    for node in plan.kept[ENTRY_MODULE]:
        for n in defined_names(node):
            _merge_definitions(seen, entry.label, n, ast.get_source_segment(entry.source, node) or "")
    clash = sorted(set(plan.imports) & set(seen))
    if clash:
        raise VendoringError(f"{clash} are both imported and defined in the custom_generate copy; rename them.")
    header = (
        f'"""{ast.get_docstring(entry.tree) or ""}\n\nGenerated by fspad-hf {_fspad_version()} from {len(plan.order)} fspad_hf '
        "modules (one section each), without docstrings and what decoding does not use.\n"
        'Do not edit: rebuild it with `fspad_hf.sharing.hub.save_head_repo` instead.\n"""\n\n'
        "from __future__ import annotations\n\n"
    )
    text = header + _import_block(plan.imports) + "\n\n\n" + "\n\n\n".join(sections) + "\n\n\n" + _entry_text(entry)
    check_standalone(text)
    return text


def check_standalone(text: str) -> None:
    """Raise if the generated file does not compile, still imports fspad_hf, or imports anything but
    torch, transformers, safetensors, huggingface_hub and the standard library (anywhere in the file)."""
    tree = ast.parse(text)
    compile(tree, "custom_generate/generate.py", "exec")
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""] if not node.level else ["." + (node.module or "")]
        bad = [m for m in mods if m.startswith((".", "fspad_hf")) or m.split(".")[0] not in ALLOWED_IMPORTS + tuple(stdlib_names())]
        if bad:
            raise VendoringError(f"custom_generate/generate.py still imports {bad} (line {node.lineno}); it may import "
                                 f"only {', '.join(ALLOWED_IMPORTS)} and the standard library.")


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
    """The model-card template: `fspad_hf/sharing/fspad_head_card.md.j2` (in a checkout, a link to `model_cards/`)."""
    return TEMPLATE_DIR / CARD_TEMPLATE_NAME


__all__ = [
    "VendoringError",
    "build_generate_py",
    "card_template_path",
    "check_standalone",
    "requirements_txt",
    "vendored_module_names",
]
