"""What a data file declares, checked before anything is allocated or converted.

A data file may come from someone else, and its header says how much it holds: an
``.npy`` header (also inside an ``.npz``) its shape, a zip member its uncompressed size,
an IDX header its dimensions, an HDF5 dataset a shape that a fill value covers without
one stored byte, a sparse matrix the offsets that index into the rows it builds. Each is
checked here, against what the file can hold and the memory there is, so that a bad file
is one line (a :class:`~pyro_vae.errors.DataError`) and never an allocation, a hang or a
write out of bounds:

- the path, resolved, is a regular file (not a folder, a FIFO or a device such as
  ``/dev/zero``, which would read without end);
- D bytes declared by S stored: D <= max(FLOOR, RATIO * S). Deflate cannot exceed about
  1032:1; real data compress far less (binarized MNIST: 14:1), so a file that declares
  more than RATIO times its size is corrupt or a decompression bomb;
- bytes read whole: at most half the available memory (:func:`check_fits`);
- one example as float32 (what a batch holds of it): at most 1/64 of the available memory;
- an HDF5 file (``.h5ad``) holds its own values: no external storage, virtual datasets or
  links to other files (:func:`check_hdf5`);
- a library that may hang or crash on a crafted file (libhdf5 on an ``.h5ad``'s metadata)
  reads and checks it first in a child process under a time limit (:func:`in_child`);
- a compressed sparse matrix (CSR or CSC, anndata's encoding, :func:`check_sparse`): a
  2-D ``shape`` of non-negative integers; ``indptr`` of ``major + 1`` integers from 0,
  never decreasing, ending at nnz = len(indices) = len(data); every entry of ``indices``
  in 0..minor-1 (the rows or columns it names).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import stat
from pathlib import Path
from tokenize import TokenError

import numpy as np

from ..errors import DataError

HDF5_ERRORS = (OSError, RuntimeError, KeyError)  # what h5py raises where an HDF5 file's structure is corrupt
HEADER_ERRORS = (ValueError, SyntaxError, TokenError, OverflowError)  # what numpy raises on a corrupt .npy header
RATIO = 100  # the most bytes a file may declare per byte it stores (above FLOOR)
FLOOR = 64 * 2**20  # declared bytes allowed whatever the file's size
SCAN = 2**22  # entries of a sparse matrix's indices checked at a time
CHILD_SECONDS = float(os.environ.get("PYRO_VAE_CHILD_SECONDS", 300))  # time allowed to in_child's work


def available_memory() -> int:
    """Bytes of RAM available to this process (Linux: MemAvailable), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def corrupt(what: str, exc: BaseException) -> DataError:
    """The one-line refusal of a file that a library could not read (``exc``)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return DataError(f"{what} cannot be read ({reason}); the file is corrupt")


def size(n: float) -> str:
    """Bytes for a message: 1.5 GiB, 12.0 MiB, 300 bytes; 2^k bytes beyond 2^60."""
    if abs(n) >= 2**60:
        return f"2^{int(abs(n)).bit_length() - 1} bytes"
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def regular_file(path: Path, kinds: str) -> None:
    """Refuse a path that does not resolve to a regular file (``kinds``: what to give instead)."""
    try:
        mode = path.resolve().stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file; give an existing {kinds} file, or --data digits") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise DataError(f"{path}: cannot be read ({exc}); give an existing {kinds} file") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder; give a data file inside it ({kinds})")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise DataError(f"{path}: is {kind}, not a regular file; give a data file ({kinds})")


def check_declared(declared: int, stored: int, what: str) -> None:
    """Refuse ``declared`` bytes from ``stored`` bytes of file beyond RATIO:1 (and FLOOR)."""
    if declared < 0:
        raise DataError(f"{what} declares a negative size; the file is corrupt")
    if declared > max(FLOOR, RATIO * stored):
        raise DataError(f"{what} declares {size(declared)} from {size(stored)} of file, more than {RATIO} times as much; "
                        "the file is corrupt or a decompression bomb (if the data are genuine, save them uncompressed)")


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Refuse reading ``nbytes`` whole when they exceed half the available memory."""
    available = available_memory()
    if nbytes > available // 2:
        raise DataError(f"{what} needs {size(nbytes)} in memory, more than half the {size(available)} available; {fix}")


def check_example(shape, what: str) -> None:
    """Refuse examples (shape ``(N, *row)``) of which one, as float32, exceeds 1/64 of the memory."""
    row = 4 * math.prod(int(n) for n in shape[1:])
    if row > available_memory() // 64:
        raise DataError(f"{what} has shape {tuple(shape)}: one example takes {size(row)} as float32, too large for "
                        f"the {size(available_memory())} of memory to hold a batch; check the file's shape")


def check_sparse(group, where: str) -> tuple[str, tuple[int, int], np.ndarray]:
    """Check an anndata CSR/CSC group (see the module's docstring) and return its format
    ("csr" or "csc"), shape and ``indptr`` (int64, read whole: major + 1 entries)."""
    encoding = group.attrs.get("encoding-type")
    encoding = encoding.decode() if isinstance(encoding, bytes) else encoding
    if not isinstance(encoding, str) or encoding not in ("csr_matrix", "csc_matrix"):
        raise DataError(f"{where} is an HDF5 group without anndata's sparse encoding (encoding-type csr_matrix or "
                        f"csc_matrix, found {encoding!r}); write the file with anndata")
    shape = np.asarray(group.attrs.get("shape", []))
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise DataError(f"{where}: the sparse matrix's shape attribute is {shape.tolist()}, not two non-negative "
                        "integers; the file is corrupt")
    parts = {}
    for name in ("data", "indices", "indptr"):
        part = hdf5_member(group, name, where)
        if not hasattr(part, "dtype") or part.ndim != 1:
            raise DataError(f"{where}: the sparse matrix has no one-dimensional {name!r} array; the file is corrupt")
        if name != "data" and part.dtype.kind not in "iu":
            raise DataError(f"{where}: the sparse matrix's {name!r} are of dtype {part.dtype}, not integers; the file is corrupt")
        parts[name] = part
    rows, columns = int(shape[0]), int(shape[1])
    major, minor = (rows, columns) if encoding == "csr_matrix" else (columns, rows)
    if len(parts["indptr"]) != major + 1:
        raise DataError(f"{where}: indptr has {len(parts['indptr'])} entries for a {rows} x {columns} "
                        f"{encoding[:3].upper()} matrix (expected {major + 1}); the file is corrupt")
    indptr = np.asarray(parts["indptr"][()], dtype=np.int64)
    nnz = len(parts["indices"])
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != nnz or len(parts["data"]) != nnz:
        raise DataError(f"{where}: indptr must rise from 0 to the {nnz} stored entries, and data hold as many "
                        f"({len(parts['data'])}); the file is corrupt")
    for start in range(0, nnz, SCAN):
        chunk = parts["indices"][start : start + SCAN]
        bad = np.flatnonzero((chunk < 0) | (chunk >= minor))
        if len(bad):
            raise DataError(f"{where}: index {int(chunk[bad[0]])} at entry {start + int(bad[0])} is outside "
                            f"0..{minor - 1}; the file is corrupt")
    return encoding[:3], (rows, columns), indptr


def in_child(work, args: tuple, what: str, seconds: float | None = None) -> None:
    """Run ``work(*args)`` in a forked child process first, and raise its
    :class:`DataError` here; a child that crashes (a signal) or runs past ``seconds``
    (:data:`CHILD_SECONDS`, the environment's ``PYRO_VAE_CHILD_SECONDS``) is killed and
    ``what`` refused in one line. Its result is dropped: the caller does the work again,
    on a file shown to be safe to it. Where fork is missing the check is skipped."""
    seconds = CHILD_SECONDS if seconds is None else seconds
    try:
        context = multiprocessing.get_context("fork")
    except ValueError:
        return
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, args, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(seconds):
            child.kill()
            raise DataError(f"{what} did not finish in {seconds:g} s (libhdf5 can hang on corrupt metadata); the file "
                            "is corrupt, or, for a very large file, raise PYRO_VAE_CHILD_SECONDS")
        try:
            message = receive.recv()
        except EOFError:  # the child died before it said anything
            child.join()
            code = child.exitcode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            raise DataError(f"{what} crashed the reader ({how}); the file is corrupt") from None
    finally:
        receive.close()
        child.join(1)
        if child.exitcode is None:  # stuck after it answered
            child.kill()
            child.join()
    if message is not None:
        raise message


def _child(work, args, send) -> None:
    try:
        work(*args)
        send.send(None)
    except DataError as exc:
        send.send(exc)
    except BaseException as exc:  # anything else a library raises on a crafted file
        send.send(corrupt(str(args[0]), exc))


def check_hdf5(handle, path: Path) -> None:
    """Every dataset of an HDF5 file: stored in the file itself (not in other files, through
    external storage or a virtual layout, which would read whatever they name, ``/dev/zero``
    included), and declaring no more than :func:`check_declared` allows against the file's
    size (a dataset read through a fill value stores nothing)."""
    stored = path.stat().st_size

    def visit(name, item):
        if not hasattr(item, "dtype"):
            return
        if item.external or item.is_virtual:
            raise DataError(f"{path}: dataset {name!r} keeps its values in other files (HDF5 external storage or a "
                            "virtual dataset); save a self-contained file")
        if item.shape is not None:
            check_declared(item.size * item.dtype.itemsize, stored, f"{path}: dataset {name!r}")

    handle.visititems(visit)


def hdf5_member(group, name: str, where: str):
    """``group[name]``, or None where absent; a link to another file is refused."""
    import h5py

    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise DataError(f"{where}: {name!r} is a link to another file ({link.filename}); save a self-contained file")
    return group.get(name) if link is not None else None
