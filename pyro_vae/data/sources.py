"""Row sources: a split's examples read on demand, from memory or from disk.

A :class:`RowSource` knows its shape ``(N, *row_shape)`` and dtype and returns the rows
at any index as a dense array, in the order asked. Sources on disk read only those
rows: an ``.npy`` through a memory map whose pages are released after reading (they
stay in the kernel's cache, not in this process's resident memory), an AnnData
matrix through h5py or anndata's backed sparse datasets (densified row by row). So a
data set larger than memory costs what one batch costs.
"""

from __future__ import annotations

import math
import mmap
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .checks import HDF5_ERRORS, HEADER_ERRORS, SCAN, check_sparse, corrupt

CHUNK_BYTES = 32 * 2**20  # dense float32 bytes per chunk when a whole source is scanned


def native(dtype) -> np.dtype:
    """The dtype rows are returned in: ``dtype`` in native byte order, extended precision
    (float128) as float64 (torch has no such type)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize > 8:
        return np.dtype(np.float64)
    return dtype.newbyteorder("=")


class RowSource:
    """Rows of one array; subclasses implement :meth:`_read` (sorted, unique rows)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    sparse: bool = False

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def dense_bytes(self) -> int:
        """Bytes of the whole source as float32, as training in memory holds it."""
        return 4 * math.prod(self.shape)

    def read(self, index) -> np.ndarray:
        """Rows ``index`` (any order, repeats allowed) as a dense array of the source's dtype."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        unique, inverse = np.unique(index, return_inverse=True)
        rows = self._read(unique).astype(self.dtype, copy=False)
        return rows if len(unique) == len(index) and np.array_equal(unique, index) else rows[inverse]

    def _read(self, sorted_rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def chunk_rows(self, chunk_bytes: int = CHUNK_BYTES) -> int:
        return max(1, chunk_bytes // max(1, 4 * math.prod(self.row_shape)))

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) over the whole source, a bounded number of bytes at a time."""
        size = self.chunk_rows(chunk_bytes)
        for start in range(0, len(self), size):
            yield start, self.read(np.arange(start, min(start + size, len(self))))


class ArrayRows(RowSource):
    """An array held in memory: numpy, or a scipy sparse matrix densified per read."""

    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = native(array.dtype)
        self.sparse = hasattr(array, "toarray")

    def _read(self, rows):
        out = self.array[rows]
        return out.toarray() if self.sparse else np.asarray(out)


class NpyRows(RowSource):
    """A C-ordered ``.npy`` file on disk, its rows gathered from a read-only memory map. The
    header is parsed by numpy (``np.load(mmap_mode="r")``, ``allow_pickle`` never: object
    arrays are refused). The pages a gather touches are released from this process
    (``madvise(MADV_DONTNEED)``) every ``RELEASE_BYTES`` read: they stay in the kernel's page
    cache, but not in this process's resident memory, so streaming a file larger than
    memory holds about a batch."""

    RELEASE_BYTES = 64 * 2**20

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)  # the header only: no page is read
        except HEADER_ERRORS as exc:
            if "object" in str(exc).lower():
                raise DataError(f"{self.path}: an .npy of object dtype (pickled Python objects) is refused; "
                                "save a numeric array") from None
            raise DataError(f"{self.path}: not a readable .npy file ({exc}); check the file") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"{self.path}: not a readable .npy file ({exc}); check the file") from None
        self.shape, self.dtype, self.stored_dtype = tuple(mapped.shape), native(mapped.dtype), mapped.dtype
        self.fortran = bool(mapped.flags.f_contiguous and not mapped.flags.c_contiguous)
        self.offset = mapped.offset
        del mapped
        self._map = None
        self._read_since_release = 0
        self._lock = threading.Lock()

    def _array(self) -> np.ndarray:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = math.prod(self.shape)
        return np.frombuffer(self._map, dtype=self.stored_dtype, count=count, offset=self.offset).reshape(self.shape)

    def _read(self, rows):
        if self.fortran:  # rows are not contiguous: let numpy's memory map gather them
            return np.asarray(np.load(self.path, mmap_mode="r", allow_pickle=False)[rows])
        with self._lock:
            out = self._array()[rows]  # a copy: fancy indexing
            self._read_since_release += out.nbytes
            if self._read_since_release >= self.RELEASE_BYTES:
                self._map.madvise(mmap.MADV_DONTNEED)
                self._read_since_release = 0
        return out


class MatrixRows(RowSource):
    """A dense cells x genes matrix of an ``.h5ad`` file read in place (an h5py dataset)."""

    def __init__(self, matrix, where: str):
        self.matrix, self.where = matrix, where
        self.shape = tuple(int(n) for n in matrix.shape)
        self.dtype = native(matrix.dtype)

    def _read(self, rows):
        try:
            return np.asarray(self.matrix[rows])
        except HDF5_ERRORS as exc:  # a corrupt chunk
            raise corrupt(self.where, exc) from None


class SparseRows(RowSource):
    """A CSR or CSC matrix of an ``.h5ad`` file (anndata's encoding: ``data``, ``indices``,
    ``indptr`` and a ``shape`` attribute) read in place, its structure checked on opening
    (:func:`~.checks.check_sparse`), so that scipy, which trusts the offsets it is given,
    only ever sees consistent arrays. CSR: each run of consecutive rows is one slice;
    CSC has no row access, so a read passes over blocks of columns of about SCAN entries."""

    sparse = True

    def __init__(self, group, where: str):
        self.format, self.shape, self.indptr = check_sparse(group, where)
        self.data, self.indices, self.where = group["data"], group["indices"], where
        self.dtype = native(self.data.dtype)
        self.values_dtype = np.dtype(np.float32) if self.dtype == np.float16 else self.dtype  # scipy has no float16
        if self.format == "csc":  # column blocks [start, stop) of about SCAN entries (at least one column)
            ends = np.searchsorted(self.indptr, np.arange(SCAN, int(self.indptr[-1]) + SCAN, SCAN), side="right") - 1
            stops = np.unique(np.clip(np.r_[ends, self.shape[1]], 1, self.shape[1])) if self.shape[1] else np.array([], int)
            self.blocks = list(zip(np.r_[0, stops[:-1]], stops))

    def _read(self, rows):
        try:
            return self._densify(rows)
        except HDF5_ERRORS as exc:  # a corrupt chunk
            raise corrupt(self.where, exc) from None

    def _slice(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        return self.data[low:high].astype(self.values_dtype), self.indices[low:high]

    def _densify(self, rows):
        out = np.zeros((len(rows), self.shape[1]), dtype=self.dtype)
        if not len(rows):
            return out
        if self.format == "csr":  # one slice of the file per run of consecutive rows
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            runs = [self._slice(self.indptr[rows[first]], self.indptr[rows[last - 1] + 1])
                    for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)])]
            indptr = np.r_[0, np.cumsum(self.indptr[rows + 1] - self.indptr[rows])]
            values, indices = (np.concatenate(part) for part in zip(*runs))
            return sp.csr_matrix((values, indices, indptr), shape=(len(rows), self.shape[1])).toarray().astype(self.dtype)
        index = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
        for start, stop in self.blocks:
            bounds = self.indptr[start : stop + 1]
            block = sp.csc_matrix((*self._slice(bounds[0], bounds[-1]), bounds - bounds[0]),
                                  shape=(self.shape[0], stop - start))
            out[:, start:stop] = block[index].toarray()
        return out


class SubsetRows(RowSource):
    """Rows ``rows`` of another source (a drawn validation or test split)."""

    def __init__(self, base: RowSource, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *base.row_shape)
        self.dtype, self.sparse = base.dtype, base.sparse

    def _read(self, rows):
        return self.base.read(self.rows[rows])

    def subset(self, rows) -> "SubsetRows":
        return SubsetRows(self.base, self.rows[rows])


def subset(source: RowSource, rows) -> RowSource:
    """Rows of ``source``, without stacking subsets of subsets."""
    if isinstance(source, SubsetRows):
        return source.subset(rows)
    if isinstance(source, ArrayRows) and not source.sparse:
        return ArrayRows(source.array[np.asarray(rows)])
    return SubsetRows(source, rows)
