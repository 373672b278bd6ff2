"""Where a run came from: library versions, the source commit and the command line.

Written into every run's ``config.json`` (under ``provenance``) so a result can be traced back to
the code and the invocation that produced it, months later or on another machine.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def provenance() -> dict[str, Any]:
    """Versions (mamlkit, torch, Python), the git commit when mamlkit runs from a checkout, the
    command line and the start time (UTC)."""
    from mamlkit import __version__

    record: dict[str, Any] = {
        "mamlkit_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "command": command_line(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record.update(git_state(Path(__file__).resolve().parent))
    return record


def command_line() -> str:
    """The command that started this process, as it would be typed (``mamlkit train ...``)."""
    if not sys.argv:
        return ""
    program = Path(sys.argv[0])
    if program.name in ("cli.py", "__main__.py") and program.parent.name == "mamlkit":
        words = ["python", "-m", "mamlkit.cli"]
    else:
        words = [program.name]
    return shlex.join([*words, *sys.argv[1:]])


def git_state(folder: Path) -> dict[str, Any]:
    """``git_commit`` and ``git_dirty`` (uncommitted changes) of the checkout holding ``folder``;
    empty when it is not in a git work tree or git is not installed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}
