"""The folder layout is the architecture: dependencies point downwards, and every room says what it owns."""

import ast
from pathlib import Path

import pytest

import fspad_hf

PACKAGE = Path(fspad_hf.__file__).parent
ROOMS = ("head", "decoding", "training", "evaluation", "sharing", "interop")
# room -> rooms it must not import (shared low-level modules at the top are allowed everywhere)
FORBIDDEN = {
    "head": {"decoding", "training", "evaluation", "sharing"},
    "decoding": {"training", "evaluation", "sharing"},
    "training": {"decoding", "evaluation", "sharing"},
    "interop": {"training", "evaluation", "sharing"},
}


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 2:  # from ..room.x import y
                rooms.add(module.split(".")[0])
            elif node.level == 0 and module.startswith("fspad_hf."):
                rooms.add(module.split(".")[1])
    return rooms


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_dependencies_point_downwards(room):
    for path in sorted((PACKAGE / room).glob("*.py")):
        bad = _imported_rooms(path) & FORBIDDEN[room]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_says_what_it_owns(room):
    doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text(encoding="utf-8")))
    assert doc and doc.startswith(f"{room}/:"), room


def test_no_module_is_too_big():
    sizes = {p.relative_to(PACKAGE): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
