"""Real clients as the tests run them: git that never prompts and reads no user config,
pip with no config, cache or retries, and bytes that do not compress."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import trio


def git_env(home: Path) -> dict[str, str]:
    """An environment for git that never prompts, reads no user or system config, uses no
    proxy, and commits as a fixed identity."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") and not k.lower().endswith("_proxy")
    }
    return {
        **env,
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Mesh Test",
        "GIT_AUTHOR_EMAIL": "mesh@example.invalid",
        "GIT_COMMITTER_NAME": "Mesh Test",
        "GIT_COMMITTER_EMAIL": "mesh@example.invalid",
    }


async def git(env: dict[str, str], *args: str | Path, cwd: Path | None = None) -> str:
    """`git -c protocol.version=2 ARGS`, which must succeed; its stdout."""
    command = ["git", "-c", "protocol.version=2", "-c", "init.defaultBranch=main"]
    result = await trio.run_process(
        [*command, *map(str, args)], cwd=cwd, env=env, capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def random_ish(size: int, seed: int) -> bytes:
    """`size` bytes that do not compress, the same for the same seed."""
    return random.Random(seed).randbytes(size)


async def pip(*args: str) -> str:
    """`pip ARGS` with no config, cache, version check or retries, which must succeed."""
    command = [sys.executable, "-m", "pip", *args, "--isolated", "--no-cache-dir"]
    command += ["--disable-pip-version-check", "--no-input", "--timeout", "10", "--retries", "0"]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = await trio.run_process(
        command, env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    return output
