"""Where a run came from: the command line that started it and the git commits of the
code (the working directory's checkout, and pyro_vae's own when it is one), recorded in
``summary.json`` so that a result can be traced back and repeated."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional


def command_line(argv: Optional[list[str]] = None) -> str:
    """The process's command line, shell-quoted, with the program named by its file name
    (``pyro-vae train ...``, ``python script.py ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name or argv[0]
    return shlex.join(argv)


def git_state(folder: Path) -> Optional[dict]:
    """``{"commit", "dirty", "root"}`` of the git checkout holding ``folder``, or None
    (not a checkout, or no git)."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "root": git("rev-parse", "--show-toplevel")}


def provenance() -> dict:
    """The command line and the git states of the working directory and of pyro_vae's source."""
    found = {"command": command_line()}
    working = git_state(Path.cwd())
    if working:
        found["git"] = working
    library = git_state(Path(__file__).resolve().parent)
    if library and (not working or library["root"] != working["root"]):
        found["pyro_vae_git"] = library
    return found
