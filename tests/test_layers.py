"""The package is its architecture: layers in folders, each importing only those below it.

`LAYERS` is the rule book: each layer (a folder of `mesh`, or a module at its top) and the
layers it may import. A layer may always import its own modules and `mesh.errors`. The
walk reads every import of every module, those under `if TYPE_CHECKING:` and inside
functions too, and fails on any against the table, on any import cycle between modules,
and on `proto` importing anything but the standard library without its I/O.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

BELOW_HTTP = frozenset({"proto", "wire", "config", "state", "pipe"})
LAYERS: Mapping[str, frozenset[str]] = {
    "proto": frozenset(),  # pure: link state, received-state, presence, settling, lifecycle
    "wire": frozenset({"proto"}),  # file format, messages, bounded decoding, crypto, names
    "config": frozenset({"proto", "wire"}),  # roster, keys (crypto identities), units
    "state": frozenset({"proto", "wire", "config"}),  # SQLite: links, requests, durability
    "pipe": frozenset({"proto", "wire", "config", "state"}),  # folders, inbox, links driver
    "http": BELOW_HTTP,  # ingress, forwarder, origin, poster
    "peer": BELOW_HTTP | {"http"},  # the composition root: one running peer
    "cli": BELOW_HTTP | {"http", "peer"},
    "__init__": BELOW_HTTP | {"http", "peer"},  # re-exports the public API
    "__main__": frozenset({"cli"}),
    "errors": frozenset(),
}
OPEN_TO_ALL = frozenset({"errors"})
# The standard library's I/O, which the pure core must not touch (time comes in as values).
IO_MODULES = frozenset(
    {
        "asyncio",
        "fcntl",
        "glob",
        "io",
        "logging",
        "mmap",
        "os",
        "pathlib",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "ssl",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
        "urllib",
    }
)
PURE = "proto"
ROOT = Path(__file__).resolve().parent.parent / "mesh"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted (absolute)
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package in folder `root`, by dotted name."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[Import]:
    """The imports in module `name` (at `path`), resolved to absolute names; `from X
    import y` names module X.y when that is a module of the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(name, sub if sub in known else base, node.lineno)


def layer_of(module: str, package: str) -> str | None:
    """The layer of a module of `package` (None for a module outside it)."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def violations(root: Path, layers: Mapping[str, frozenset[str]]) -> list[str]:
    """Each import against `layers` and each module outside any layer, as a sentence."""
    package, known = root.name, modules(root)
    found = []
    for name, path in known.items():
        mine = layer_of(name, package)
        if mine not in layers:
            found.append(f"{name}: in no layer of the table")
            continue
        for each in imports(name, path, known):
            theirs = layer_of(each.target, package)
            allowed = layers[mine] | OPEN_TO_ALL | {mine}
            if theirs is not None and theirs not in allowed:
                found.append(f"{name}:{each.line}: {mine} imports {theirs} ({each.target})")
    return found


def cycles(root: Path) -> list[list[str]]:
    """The import cycles between modules of the package, each once (Tarjan's strongly
    connected components of more than one module, or a module importing itself)."""
    known = modules(root)
    graph = {
        name: sorted({i.target for i in imports(name, path, known) if i.target in known})
        for name, path in known.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def impure(root: Path, pure: str) -> list[str]:
    """Imports of the pure layer that are not the standard library without its I/O."""
    package, known = root.name, modules(root)
    found = []
    for name, path in known.items():
        if layer_of(name, package) != pure:
            continue
        for each in imports(name, path, known):
            top = each.target.split(".")[0]
            if top == package:
                continue
            if top not in sys.stdlib_module_names or top in IO_MODULES:
                found.append(f"{name}:{each.line}: imports {each.target}")
    return found


def test_every_import_follows_the_table() -> None:
    assert violations(ROOT, LAYERS) == []


def test_no_module_imports_itself_back() -> None:
    assert cycles(ROOT) == []


def test_the_core_is_pure() -> None:
    assert impure(ROOT, PURE) == []


# -- the checks themselves, on a made-up package -------------------------------------


def tree(root: Path, files: Mapping[str, str]) -> Path:
    """A package `pkg` in `root` holding `files` (path: source)."""
    for name, source in {"__init__.py": "", **files}.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source)
    return root / "pkg"


TABLE = {"proto": frozenset(), "wire": frozenset({"proto"}), "__init__": frozenset()}


def test_an_import_upwards_is_caught_even_when_only_for_type_checking(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "wire/a.py": "from ..proto import b\n",
            "proto/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..wire.a import A\n",
        },
    )
    assert violations(package, TABLE) == ["pkg.proto.b:3: proto imports wire (pkg.wire.a)"]


def test_a_module_outside_the_table_is_caught(tmp_path: Path) -> None:
    package = tree(tmp_path, {"extra.py": "", "proto/b.py": "import json\n"})
    assert violations(package, TABLE) == ["pkg.extra: in no layer of the table"]


def test_a_cycle_is_caught_within_a_layer_and_inside_functions(tmp_path: Path) -> None:
    package = tree(
        tmp_path,
        {
            "wire/a.py": "from . import b\n",
            "wire/b.py": "def f() -> None:\n    from .c import x\n",
            "wire/c.py": "import pkg.wire.a\nx = 1\n",
            "wire/d.py": "from .a import y\n",
        },
    )
    assert cycles(package) == [["pkg.wire.a", "pkg.wire.b", "pkg.wire.c"]]


@pytest.mark.parametrize("line", ["import os", "from time import time", "import trio"])
def test_the_core_may_not_do_io(tmp_path: Path, line: str) -> None:
    package = tree(tmp_path, {"proto/b.py": f"import heapq\n{line}\n"})
    assert len(impure(package, "proto")) == 1
