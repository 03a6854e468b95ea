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
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent  # fspad_hf/sharing: entry.py and the model-card template
PACKAGE_DIR = TEMPLATE_DIR.parent
ENTRY_FILE = TEMPLATE_DIR / "entry.py"
ENTRY_MODULE = "sharing.entry"
CARD_TEMPLATE_NAME = "fspad_head_card.md.j2"
ROOT_MODULES = ("decoding.generation",)  # tree decoding; the copy follows its relative imports first
OMIT_MARKER = "# standalone: omit"
VENDOR_BEGIN = "# fspad-hf: vendored-begin"
VENDOR_END = "# fspad-hf: vendored-end"
DEFAULT_MARKER = "# fspad-hf: default-draft-model"
RUNTIME_REQUIREMENTS = ("torch", "transformers", "safetensors", "huggingface-hub")
FALLBACK_REQUIREMENTS = ("torch>=2.4", "transformers<5.30", "transformers>=5.20", "safetensors>=0.4", "huggingface-hub>=1.0")
ALLOWED_IMPORTS = ("torch", "transformers", "safetensors", "huggingface_hub")  # + the standard library
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class VendoringError(RuntimeError):
    """The library modules cannot be merged safely (the message names the module and the cause)."""


# ---------------------------------------------------------------------------- one module, parsed
@dataclass(frozen=True)
class _Binding:
    """One name bound by an absolute import: `import module [as asname]` or `from module import name [as asname]`."""

    module: str
    name: str | None = None
    asname: str | None = None

    @property
    def text(self) -> str:
        if self.name is None:
            return f"import {self.module}" + (f" as {self.asname}" if self.asname else "")
        return self.name + (f" as {self.asname}" if self.asname and self.asname != self.name else "")


@dataclass
class _Module:
    name: str  # dotted path below fspad_hf, e.g. "decoding.generation"
    source: str
    keep_docstrings: bool = False
    tree: ast.Module = field(init=False)
    lines: list[str] = field(init=False)
    statements: list[ast.stmt] = field(default_factory=list)  # candidates for the copy, in source order
    defines: dict[str, ast.stmt] = field(default_factory=dict)
    omitted: dict[str, int] = field(default_factory=dict)  # top-level name marked omit -> its line
    internal: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    import_line: dict[str, int] = field(default_factory=dict)  # imported module -> line of its first import
    external: dict[str, list[_Binding]] = field(default_factory=dict)  # local name -> absolute imports
    dropped: list[ast.stmt] = field(default_factory=list)  # imports, docstring, `__all__`

    @property
    def label(self) -> str:
        return f"fspad_hf/{self.name.replace('.', '/')}.py"

    def __post_init__(self):
        try:
            self.tree = ast.parse(self.source, filename=self.label)
        except SyntaxError as error:
            raise VendoringError(f"{self.label} does not parse: {error}") from error
        self.lines = self.source.splitlines()
        keep_all = self.name == ENTRY_MODULE  # the entry point is copied whole
        for node in self.tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "fspad_hf" or alias.name.startswith("fspad_hf."):
                        raise VendoringError(f"{self.label}: use `from .module import x` instead of `import {alias.name}` "
                                             f"(line {node.lineno}).")
                    local = alias.asname or alias.name.split(".")[0]
                    self.external.setdefault(local, []).append(_Binding(alias.name, None, alias.asname))
                self.dropped.append(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
                self.dropped.append(node)
            elif _is_docstring(node) or _is_all(node):
                self.dropped.append(node)
            elif self.is_omitted(node):
                for name in _defined_names(node):
                    self.omitted[name] = node.lineno
            else:
                if not _defined_names(node) and not keep_all:
                    raise VendoringError(
                        f"{self.label}: the top-level statement on line {node.lineno} defines no name, so the "
                        f"custom_generate copy cannot tell whether it is needed. Move it into a function, or mark it "
                        f"`{OMIT_MARKER}`."
                    )
                self.statements.append(node)
                for name in _defined_names(node):
                    if name in self.defines:
                        raise VendoringError(f"{self.label} defines `{name}` twice (lines {self.defines[name].lineno} "
                                             f"and {node.lineno}).")
                    self.defines[name] = node

    def _import_from(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module == "__future__":
            return
        if not node.level and module != "fspad_hf" and not module.startswith("fspad_hf."):
            for alias in node.names:
                if alias.name == "*":
                    raise VendoringError(f"{self.label}: `from {module} import *` cannot be merged (line {node.lineno}).")
                local = alias.asname or alias.name
                self.external.setdefault(local, []).append(_Binding(module, alias.name, alias.asname))
            return
        target = self.resolve(node)
        for alias in node.names:
            if alias.name == "*":
                raise VendoringError(f"{self.label}: `import *` from {target} cannot be merged (line {node.lineno}).")
            self.internal[alias.asname or alias.name] = (target, alias.name)
        self.import_line.setdefault(target, node.lineno)

    def resolve(self, node: ast.ImportFrom) -> str:
        """Dotted module (below fspad_hf) that `from <...> import` names, e.g. `..head.modeling` -> `head.modeling`."""
        if not node.module:
            raise VendoringError(f"{self.label}: only `from .module import x` is supported (line {node.lineno}).")
        if not node.level:
            return node.module[len("fspad_hf."):] if node.module != "fspad_hf" else ""
        package = self.name.split(".")[:-1]
        if node.level - 1 > len(package):
            raise VendoringError(f"{self.label}: the relative import on line {node.lineno} leaves the fspad_hf package.")
        return ".".join(package[: len(package) - (node.level - 1)] + node.module.split("."))

    def is_omitted(self, node: ast.stmt) -> bool:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        above = self.lines[first - 2].strip() if first >= 2 else ""
        return above.startswith(OMIT_MARKER) or OMIT_MARKER in self.lines[node.lineno - 1]

    def omitted_members(self, node: ast.stmt) -> list[ast.stmt]:
        """Methods (and nested classes) of a kept class that are marked omit, anywhere inside `node`."""
        out = []
        for cls in _walk(node, []):
            if isinstance(cls, ast.ClassDef):
                out += [item for item in cls.body if isinstance(item, _DEFINITIONS) and self.is_omitted(item)]
        return out


def _walk(node: ast.AST, skip: list[ast.AST]):
    """`ast.walk` that does not enter the nodes in `skip`."""
    skip_ids = {id(n) for n in skip}
    todo = deque([node])
    while todo:
        current = todo.popleft()
        if id(current) in skip_ids:
            continue
        yield current
        todo.extend(ast.iter_child_nodes(current))


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_all(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, _DEFINITIONS):
        return [node.name]
    targets = list(node.targets) if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    names = []
    while targets:  # `a = b = ...`, `a, (b, *c) = ...`; not `obj.attr = ...` nor `obj[i] = ...`
        target = targets.pop(0)
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            targets += target.elts
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
    return names


def _module(name: str) -> _Module:
    path = PACKAGE_DIR.joinpath(*name.split(".")).with_suffix(".py")
    if not name or not path.is_file():
        raise VendoringError(f"fspad_hf/{name.replace('.', '/') or '__init__'}.py not found (needed by the "
                             "custom_generate copy); import names from the module that defines them.")
    return _Module(name, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- what the copy keeps
@dataclass
class _Plan:
    modules: dict[str, _Module]
    kept: dict[str, list[ast.stmt]]  # module -> kept statements (source order)
    aliases: dict[str, list[str]]  # module -> `asname = name` lines for renamed internal imports
    imports: dict[str, list[_Binding]]  # local name -> absolute imports used by kept code
    edges: dict[str, set[str]]  # module -> modules it takes kept names from
    order: list[str] = field(default_factory=list)  # library modules, dependencies first


def _annotation_nodes(node: ast.AST, skip: list[ast.AST]) -> set[int]:
    """ids of the nodes inside annotations: never evaluated in the copy (`from __future__ import annotations`)."""
    roots = []
    for inner in _walk(node, skip):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.append(inner.returns)
        elif isinstance(inner, (ast.arg, ast.AnnAssign)):
            roots.append(inner.annotation)
    return {id(n) for root in roots if root is not None for n in ast.walk(root)}


def _plan(entry: _Module) -> _Plan:
    """Which statements of which modules the copy needs: names reachable from the entry point."""
    modules = {entry.name: entry}
    kept_ids: dict[str, set[int]] = {}
    plan = _Plan(modules, {}, {}, {}, {})
    omitted_uses: list[tuple[str, str, str]] = []
    todo: deque[tuple[str, str, bool]] = deque()  # (module, name, used at run time)
    seen: set[tuple[str, str, bool]] = set()

    def keep(mod: _Module, node: ast.stmt) -> None:
        if id(node) in kept_ids.setdefault(mod.name, set()):
            return
        kept_ids[mod.name].add(id(node))
        skip = mod.omitted_members(node)
        annotations = _annotation_nodes(node, skip)
        for inner in _walk(node, skip):
            if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("fspad_hf")):
                raise VendoringError(
                    f"{mod.label} imports fspad_hf code inside a definition (line {inner.lineno}); the custom_generate "
                    "copy needs module-level imports. Move it to the top of the module."
                )
            if isinstance(inner, ast.Name):
                todo.append((mod.name, inner.id, id(inner) not in annotations))

    for node in entry.statements:
        keep(entry, node)
    while todo:
        key = todo.popleft()
        if key in seen:
            continue
        seen.add(key)
        mod, name, runtime = modules[key[0]], key[1], key[2]
        if name in mod.defines:
            keep(mod, mod.defines[name])
        elif name in mod.internal:
            target, original = mod.internal[name]
            if target not in modules:
                modules[target] = _module(target)
            if original != name and mod is entry:
                raise VendoringError(f"{entry.label}: import `{original}` under its own name (not as `{name}`).")
            if original != name and f"{name} = {original}" not in plan.aliases.get(mod.name, []):
                plan.aliases.setdefault(mod.name, []).append(f"{name} = {original}")
            plan.edges.setdefault(mod.name, set()).add(target)
            todo.append((target, original, runtime or original != name))
        elif name in mod.external:
            for binding in mod.external[name]:
                _add_import(plan.imports, name, binding, mod)
        elif name in mod.omitted and runtime:
            omitted_uses.append((mod.name, name, f"{mod.label}:{mod.omitted[name]}"))

    for mod_name, name, where in omitted_uses:
        if name not in entry.defines:
            raise VendoringError(
                f"`{name}` ({where}) is marked `{OMIT_MARKER}` but kept code of fspad_hf/"
                f"{mod_name.replace('.', '/')}.py uses it: define a stand-in `{name}` in sharing/entry.py, or drop the marker."
            )
    for name, mod in modules.items():
        plan.kept[name] = [node for node in mod.statements if id(node) in kept_ids.get(name, set())]
    plan.order = _dependency_order(plan)
    return plan


def _add_import(imports: dict[str, list[_Binding]], local: str, binding: _Binding, mod: _Module) -> None:
    top = binding.module.split(".")[0]
    if top not in ALLOWED_IMPORTS and top not in _stdlib_names():
        raise VendoringError(f"{mod.label} imports `{binding.module}`; the custom_generate copy may only import "
                             f"{', '.join(ALLOWED_IMPORTS)} and the standard library.")
    known = imports.setdefault(local, [])
    if binding in known:
        return
    plain = binding.name is None and binding.asname is None  # `import a.b` binds `a`, like any `import a.c`
    if known and not (plain and all(b.name is None and b.asname is None for b in known)):
        raise VendoringError(f"`{local}` is imported differently by two modules of the custom_generate copy "
                             f"({known[0].text!r} and, in {mod.label}, {binding.text!r}); use one import.")
    known.append(binding)


def _stdlib_names() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | {"__future__"}


def _dependency_order(plan: _Plan) -> list[str]:
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order or name not in plan.modules:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise VendoringError(f"circular relative imports in the custom_generate copy: {cycle}")
        visiting.append(name)
        mod = plan.modules[name]
        for dep in sorted(plan.edges.get(name, ()), key=mod.import_line.__getitem__):  # in import order
            visit(dep)
        visiting.pop()
        if name != ENTRY_MODULE and plan.kept.get(name):
            order.append(name)

    for root in ROOT_MODULES:
        if root not in plan.modules:
            raise VendoringError(f"the entry point does not reach fspad_hf/{root.replace('.', '/')}.py")
        visit(root)
    visit(ENTRY_MODULE)
    return order


# ---------------------------------------------------------------------------- writing it out
def _statement_text(mod: _Module, node: ast.stmt) -> str:
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
    for block in _walk(node, omitted):
        if not isinstance(block, _DEFINITIONS):
            continue
        removed = [item for item in block.body if id(item) in omitted_ids]
        doc = block.body[0]
        if not mod.keep_docstrings and _is_docstring(doc) and _own_lines(lines, doc):
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


def _import_block(imports: dict[str, list[_Binding]], width: int = 110) -> str:
    """The merged imports: standard library first, then the third-party packages; `import x` before `from x`."""
    groups: dict[bool, list[str]] = {True: [], False: []}
    grouped: dict[str, set[str]] = {}
    for bindings in imports.values():
        for b in bindings:
            if b.name is None:
                groups[b.module.split(".")[0] in _stdlib_names()].append(b.text)
            else:
                grouped.setdefault(b.module, set()).add(b.text)
    groups = {stdlib: sorted(set(lines)) for stdlib, lines in groups.items()}
    for module in sorted(grouped):
        head, current = f"from {module} import ", []
        for name in sorted(grouped[module], key=str.lower):
            if current and len(head) + len(", ".join([*current, name])) > width:
                groups[module.split(".")[0] in _stdlib_names()].append(head + ", ".join(current))
                current = []
            current.append(name)
        groups[module.split(".")[0] in _stdlib_names()].append(head + ", ".join(current))
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
            wide = isinstance(node, _DEFINITIONS) or isinstance(previous, _DEFINITIONS)
            out += "\n\n\n" if wide else "\n\n"
        out += text
        previous = node
    return out


def _entry_module(default_draft_model: str | None) -> _Module:
    text = ENTRY_FILE.read_text(encoding="utf-8")
    if VENDOR_BEGIN not in text or VENDOR_END not in text:
        raise VendoringError(f"{ENTRY_FILE} lacks the `{VENDOR_BEGIN}` / `{VENDOR_END}` block.")
    out = []
    for line in text.splitlines():
        if line.rstrip().endswith(DEFAULT_MARKER):
            line = f"DEFAULT_DRAFT_MODEL: str | None = {default_draft_model!r}  {DEFAULT_MARKER}"
        out.append(line)
    return _Module(ENTRY_MODULE, "\n".join(out) + "\n", keep_docstrings=True)


def _entry_text(entry: _Module) -> str:
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
    return _plan(_entry_module(None)).order


def build_generate_py(default_draft_model: str | None = None) -> str:
    """The text of `custom_generate/generate.py`: the needed library code + the entry point.

    default_draft_model: repo id (or folder) the head is loaded from when `generate()` gets no `draft_model`.
    """
    entry = _entry_module(default_draft_model)
    plan = _plan(entry)
    seen: dict[str, tuple[str, str]] = {}
    sections = []
    for name in plan.order:
        mod = plan.modules[name]
        blocks: list[tuple[ast.stmt | None, str]] = [(None, line) for line in plan.aliases.get(name, [])]
        for alias in plan.aliases.get(name, []):
            _merge_definitions(seen, mod.label, alias.split(" = ")[0], alias)
        for node in plan.kept[name]:
            fresh = [_merge_definitions(seen, mod.label, n, ast.get_source_segment(mod.source, node) or "")
                     for n in _defined_names(node)]
            if fresh and not any(fresh):
                continue  # the same definition already came from an earlier module
            blocks.append((node, _statement_text(mod, node)))
        sections.append(f"# {'-' * 30} {mod.label}\n{_join(blocks)}")
    for node in plan.kept[ENTRY_MODULE]:
        for n in _defined_names(node):
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
        bad = [m for m in mods if m.startswith((".", "fspad_hf")) or m.split(".")[0] not in ALLOWED_IMPORTS + tuple(_stdlib_names())]
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
