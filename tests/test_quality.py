"""The package type-checks strictly and lints clean."""

from __future__ import annotations

import subprocess
import sys
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
