"""The package type-checks strictly, lints clean, keeps its rooms small, and declares
every library it imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_mypy_strict_is_clean() -> None:
    result = run("mypy", "mesh")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "mesh", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("ruff", "format", "--check", "mesh")
    assert result.returncode == 0, result.stdout + result.stderr


MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 550, 300, 60  # lines
ROOMY = ("cli", "config")  # layers whose modules may be longer (a CLI, the roster's rules)


def sizes(root: Path) -> list[str]:
    """Each module, class and function of the package in `root` over its size, as a line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent)
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE and where.parts[1] not in ROOMY:
            found.append(f"{where}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > limit:
                    found.append(f"{where}:{node.lineno} {node.name}: {size} lines")
    return found


def test_modules_classes_and_functions_stay_small() -> None:
    assert sizes(ROOT / "mesh") == []


def test_every_library_imported_is_declared() -> None:
    """A library the package imports directly must be in pyproject's dependencies, not
    there by chance as another library's dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normal(re.split(r"[<>=!~ \[;]", d)[0]) for d in project["dependencies"]}
    distributions = packages_distributions()
    missing = set()
    for path in (ROOT / "mesh").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            tops = []
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.split(".")[0]]
            for top in tops:
                if top in sys.stdlib_module_names or top == "mesh":
                    continue
                names = {_normal(d) for d in distributions.get(top, [top])}
                if not names & declared:
                    missing.add(f"{top} ({', '.join(sorted(names))})")
    assert sorted(missing) == []


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
