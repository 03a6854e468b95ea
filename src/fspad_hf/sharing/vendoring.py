"""The parsing half of the standalone builder: modules as ASTs, which definitions the copy keeps, in what order.

See `sharing/standalone.py` for the rules; this module only reads the library's source.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
OMIT_MARKER = "# standalone: omit"
ALLOWED_IMPORTS = ("torch", "transformers", "safetensors", "huggingface_hub")  # + the standard library
ENTRY_MODULE = "sharing.entry"
ROOT_MODULES = ("decoding.generation",)  # tree decoding; the copy follows its relative imports first
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class VendoringError(RuntimeError):
    """The library modules cannot be merged safely (the message names the module and the cause)."""


# ---------------------------------------------------------------------------- one module, parsed
@dataclass(frozen=True)
class Binding:
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
class Module:
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
    external: dict[str, list[Binding]] = field(default_factory=dict)  # local name -> absolute imports
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
                    self.external.setdefault(local, []).append(Binding(alias.name, None, alias.asname))
                self.dropped.append(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
                self.dropped.append(node)
            elif is_docstring(node) or is_all(node):
                self.dropped.append(node)
            elif self.is_omitted(node):
                for name in defined_names(node):
                    self.omitted[name] = node.lineno
            else:
                if not defined_names(node) and not keep_all:
                    raise VendoringError(
                        f"{self.label}: the top-level statement on line {node.lineno} defines no name, so the "
                        f"custom_generate copy cannot tell whether it is needed. Move it into a function, or mark it "
                        f"`{OMIT_MARKER}`."
                    )
                self.statements.append(node)
                for name in defined_names(node):
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
                self.external.setdefault(local, []).append(Binding(module, alias.name, alias.asname))
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
        for cls in walk(node, []):
            if isinstance(cls, ast.ClassDef):
                out += [item for item in cls.body if isinstance(item, DEFINITIONS) and self.is_omitted(item)]
        return out


def walk(node: ast.AST, skip: list[ast.AST]):
    """`ast.walk` that does not enter the nodes in `skip`."""
    skip_ids = {id(n) for n in skip}
    todo = deque([node])
    while todo:
        current = todo.popleft()
        if id(current) in skip_ids:
            continue
        yield current
        todo.extend(ast.iter_child_nodes(current))


def is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def is_all(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, DEFINITIONS):
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


def module(name: str) -> Module:
    path = PACKAGE_DIR.joinpath(*name.split(".")).with_suffix(".py")
    if not name or not path.is_file():
        raise VendoringError(f"fspad_hf/{name.replace('.', '/') or '__init__'}.py not found (needed by the "
                             "custom_generate copy); import names from the module that defines them.")
    return Module(name, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- what the copy keeps
@dataclass
class Plan:
    modules: dict[str, Module]
    kept: dict[str, list[ast.stmt]]  # module -> kept statements (source order)
    aliases: dict[str, list[str]]  # module -> `asname = name` lines for renamed internal imports
    imports: dict[str, list[Binding]]  # local name -> absolute imports used by kept code
    edges: dict[str, set[str]]  # module -> modules it takes kept names from
    order: list[str] = field(default_factory=list)  # library modules, dependencies first


def annotation_nodes(node: ast.AST, skip: list[ast.AST]) -> set[int]:
    """ids of the nodes inside annotations: never evaluated in the copy (`from __future__ import annotations`)."""
    roots = []
    for inner in walk(node, skip):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.append(inner.returns)
        elif isinstance(inner, (ast.arg, ast.AnnAssign)):
            roots.append(inner.annotation)
    return {id(n) for root in roots if root is not None for n in ast.walk(root)}


def make_plan(entry: Module) -> Plan:
    """Which statements of which modules the copy needs: names reachable from the entry point."""
    modules = {entry.name: entry}
    kept_ids: dict[str, set[int]] = {}
    plan = Plan(modules, {}, {}, {}, {})
    omitted_uses: list[tuple[str, str, str]] = []
    todo: deque[tuple[str, str, bool]] = deque()  # (module, name, used at run time)
    seen: set[tuple[str, str, bool]] = set()

    def keep(mod: Module, node: ast.stmt) -> None:
        if id(node) in kept_ids.setdefault(mod.name, set()):
            return
        kept_ids[mod.name].add(id(node))
        skip = mod.omitted_members(node)
        annotations = annotation_nodes(node, skip)
        for inner in walk(node, skip):
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
                modules[target] = module(target)
            if original != name and mod is entry:
                raise VendoringError(f"{entry.label}: import `{original}` under its own name (not as `{name}`).")
            if original != name and f"{name} = {original}" not in plan.aliases.get(mod.name, []):
                plan.aliases.setdefault(mod.name, []).append(f"{name} = {original}")
            plan.edges.setdefault(mod.name, set()).add(target)
            todo.append((target, original, runtime or original != name))
        elif name in mod.external:
            for binding in mod.external[name]:
                add_import(plan.imports, name, binding, mod)
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
    plan.order = dependency_order(plan)
    return plan


def add_import(imports: dict[str, list[Binding]], local: str, binding: Binding, mod: Module) -> None:
    top = binding.module.split(".")[0]
    if top not in ALLOWED_IMPORTS and top not in stdlib_names():
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


def stdlib_names() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | {"__future__"}


def dependency_order(plan: Plan) -> list[str]:
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


