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
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
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
        _discard(tmp)
        reason = f"{path.parent} is not a folder" if path.parent.exists() and not path.parent.is_dir() else \
            exc.strerror or exc
        raise RunError(f"could not write {path} ({reason}); the previous file, if any, is kept") from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file, if it could be made at all (its folder may be a file)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


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


def check_room(path: Path, nbytes: int, lower: str = "") -> None:
    """Refuse, before writing, a file of about ``nbytes`` that the file size limit (``ulimit
    -f``) or the free disk space would cut short: for writers that cannot fail cleanly half
    way (HDF5, whose half-written file crashes the process when it is closed), and before
    long work whose output would not fit. ``lower``: the flag that makes the file smaller."""
    lower = f", or lower {lower}" if lower else ""
    path = Path(path)
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise RunError(f"could not write {path}: about {nbytes / 1e6:.3g} MB, over this process's file size limit of "
                       f"{soft / 1e6:.3g} MB (ulimit -f); raise the limit{lower}")
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if nbytes > free:
        raise RunError(f"could not write {path}: about {nbytes / 1e6:.3g} MB, and its disk has {free / 1e6:.3g} MB free; "
                       f"free some space{lower}")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    """Write ``path`` through ``write(file)``, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


class NpzWriter:
    """An ``.npz`` (numpy's zip of ``.npy`` files, uncompressed, as ``np.savez`` writes it)
    written entry by entry, and a large array row chunk by row chunk (:meth:`rows`), so
    what is written need not be held in memory. ``np.load`` reads it as any ``.npz``."""

    def __init__(self, file):
        self.zip = zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.entry = None

    def add(self, name: str, array) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)

    def rows(self, name: str, shape: tuple, dtype=np.float32) -> Callable[[np.ndarray], None]:
        """Start the array ``name`` of ``shape``; returns ``write(chunk)``, which appends
        rows (arrays of shape (m, *shape[1:])). All shape[0] rows must come before the
        next array or :meth:`close`. One array at a time."""
        dtype, shape, written = np.dtype(dtype), tuple(shape), 0
        self.entry = self.zip.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(
            self.entry, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})

        def write(chunk):
            nonlocal written
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if chunk.shape[1:] != shape[1:] or written + len(chunk) > shape[0]:
                raise ValueError(f"{name}: rows of shape {chunk.shape} do not continue an array of shape {shape}")
            self.entry.write(chunk.data)
            written += len(chunk)
            if written == shape[0]:
                self.entry.close()
                self.entry = None

        if not shape[0]:
            write(np.zeros(shape, dtype))
        return write

    def close(self) -> None:
        """Close the file (an array left short, after an error on the way, is closed as it is)."""
        if self.entry is not None:
            self.entry.close()
        self.zip.close()


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
        raise RunError(f"{path}: unreadable ({exc}): the table holds something other than numbers; restore the "
                       "file the run wrote, or train the run again") from None
