"""Files written whole or not at all: atomic writes (a temporary name in the same folder,
fsynced, renamed over the old file) and the CSV tables of metrics and comparisons.
A crash or a full disk never leaves a half-written file."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import RunError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed over ``path`` on success,
    removed on failure, so ``path`` is either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # never write through a link planted under the temporary name
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path} ({exc.strerror or exc}); the previous file, if any, is kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_folder(folder: Path) -> Path:
    """``folder`` (a run's ``evaluation/``, ``analysis/``, ``samples/``, ``figures/``), created
    when missing. A symbolic link or a file in its place is refused: a run directory may come
    from someone else, and a command writes only inside it."""
    folder = Path(folder)
    if folder.is_symlink():
        raise RunError(f"{folder}: is a symbolic link (to {os.readlink(folder)}); outputs are written only inside the "
                       "run directory: remove the link, or copy the run")
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: exists and is not a folder; move it away, then run again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{folder}: cannot create the folder ({exc.strerror or exc}); make the run directory "
                       "writable, or copy the run somewhere writable") from None
    return folder


def check_room(path: Path, nbytes: int) -> None:
    """Refuse, before writing, a file of about ``nbytes`` that the file size limit (``ulimit
    -f``) or the free disk space would cut short: for writers that cannot fail cleanly half
    way (HDF5, whose half-written file crashes the process when it is closed)."""
    path = Path(path)
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise RunError(f"could not write {path}: about {nbytes / 1e6:.3g} MB, over this process's file size limit of "
                       f"{soft / 1e6:.3g} MB (ulimit -f); raise the limit")
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if nbytes > free:
        raise RunError(f"could not write {path}: about {nbytes / 1e6:.3g} MB, and its disk has {free / 1e6:.3g} MB free; "
                       "free some space")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    """Write ``path`` through ``write(file)``, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, float]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run directory is incomplete") from None
    except (ValueError, TypeError, csv.Error) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
