"""Data sources -> :class:`RawData`: row sources per split, labels, and what normalizing needs.

| source | how |
| --- | --- |
| ``digits`` | scikit-learn's bundled 8x8 handwritten digits (levels 0..16, labels), no download |
| ``.npz`` | arrays ``train`` and optionally ``valid``, ``test``, ``<split>_labels``; read whole |
| ``.npy`` | one array (the training split), any trailing shape; rows read from disk on demand |
| ``.csv`` / ``.tsv`` | a numeric table, an optional header row, an optional label column (``data.labels``); read whole, its SHA-256 recorded |
| ``.h5ad`` | AnnData (``pip install "pyro-vae[anndata]"``): ``X`` or ``layers[data.layer]``, dense or CSR/CSC, read in place; labels from ``obs[data.labels]``, splits from ``obs[data.split_column]`` |
| IDX | MNIST ``*-idx3-ubyte[.gz]``, labels from the sibling ``*-idx1-ubyte[.gz]`` |

Nothing is ever unpickled (``allow_pickle=False`` throughout).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import struct
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..registry import Registry
from .sources import ArrayRows, MatrixRows, NpyRows, RowSource, subset

DATASETS = Registry("data set")
SPLITS = ("train", "valid", "test")
FILE_KINDS = ".npz, .npy, .csv, .tsv, .h5ad or MNIST IDX (*-idx3-ubyte[.gz])"


@dataclass
class RawData:
    """Splits as read from the source (row sources), before preparation."""

    splits: dict[str, RowSource]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    label_names: Optional[list[str]] = None  # string labels, in the order of their integer codes
    sha256: Optional[str] = None  # of a file read whole (CSV), recorded by the run
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # a split's rows in its array, where drawn from one
    levels: Optional[int] = None  # the largest integer level, where the source knows it (digits: 16)
    feature_names: Optional[list[str]] = None  # a CSV header's names of the feature columns

    @cached_property
    def max_level(self) -> Optional[int]:
        """The number ``normalize`` divides by: ``levels``, or else found in the data (see
        :func:`integer_levels`; one pass over them, once)."""
        return self.levels if self.levels is not None else integer_levels(self.splits.values())


def value_range(source: RowSource) -> tuple[float, float]:
    """(min, max) of a source, in chunks for sources on disk."""
    if isinstance(source, ArrayRows) and not source.sparse:
        return float(source.array.min()), float(source.array.max())
    low, high = math.inf, -math.inf
    for _, rows in source.chunks():
        low, high = min(low, float(rows.min())), max(high, float(rows.max()))
    return low, high


def integer_levels(sources) -> Optional[int]:
    """The number ``normalize`` divides a file's arrays by, the same for every format:
    255 when every array is of an integer dtype (uint8, int64, ...) with values in
    0..255 and some above 1 (8-bit levels); None otherwise: integers that are all 0/1
    are binary data and stay as they are, larger integers are counts, floats are
    taken as they are."""
    sources = [s if isinstance(s, RowSource) else ArrayRows(np.asarray(s)) for s in sources]
    if not sources or not all(np.issubdtype(s.dtype, np.integer) for s in sources):
        return None
    ranges = [value_range(s) for s in sources]
    lowest, highest = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return 255 if lowest >= 0 and 1 < highest <= 255 else None


def _check_numeric(name: str, dtype: np.dtype, shape, source: str) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool):
        raise DataError(f"{source}: array {name!r} has dtype {dtype}; expected numbers (uint8, int or float)")
    if len(shape) < 2 or shape[0] == 0:
        raise DataError(f"{source}: array {name!r} has shape {tuple(shape)}; expected one row per example (N, ...)")


def _array(name: str, array: np.ndarray, source: str) -> ArrayRows:
    _check_numeric(name, array.dtype, array.shape, source)
    return ArrayRows(array.astype(np.uint8) if array.dtype == bool else array)


def encode_labels(values, where: str) -> tuple[np.ndarray, Optional[list[str]]]:
    """Labels as int64 codes: integers as they are, integral floats cast, strings (or
    categories) mapped to 0..C-1 in sorted order (the names are returned). Fractional
    or missing values are refused."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return values.astype(np.int64), None
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise DataError(f"{where}: labels must be integers or names, found fractional or missing values; "
                            "round them, or store class names")
        return values.astype(np.int64), None
    if values.dtype.kind in "USO":
        text = values.astype(str)
        if values.dtype.kind == "O" and any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            raise DataError(f"{where}: labels have missing values; fill or drop those rows")
        names, codes = np.unique(text, return_inverse=True)
        return codes.astype(np.int64), [str(n) for n in names]
    raise DataError(f"{where}: labels of dtype {values.dtype} are neither integers nor names")


@DATASETS.register("digits")
def digits() -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, levels 0..16, labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawData({"train": ArrayRows(bunch.data.astype(np.float32))}, {"train": bunch.target.astype(np.int64)},
                   source="digits", levels=16)


def read_npz(path: Path, options=None) -> RawData:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{source}: no such data file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npz archive ({exc}); check the file") from None
    splits = {s: _array(s, arrays[s], source) for s in SPLITS if s in arrays}
    if not splits:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(f"{source}: no 'train', 'valid' or 'test' array (found {found})")
    shapes = {s: a.row_shape for s, a in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{source}: splits disagree on the example shape {shapes}")
    labels, names = {}, None
    for split in splits:
        key = f"{split}_labels"
        if key in arrays:
            if len(arrays[key]) != len(splits[split]):
                raise DataError(f"{source}: {key} has {len(arrays[key])} rows but {split} has {len(splits[split])}")
            labels[split], split_names = encode_labels(arrays[key], f"{source} ({key})")
            if split_names is not None:
                if names is not None and names != split_names:
                    raise DataError(f"{source}: the splits' string labels name different classes; use one set of names")
                names = split_names
    return RawData(splits, labels, source, names)


def read_npy(path: Path, options=None) -> RawData:
    rows = NpyRows(path)
    _check_numeric("the array", rows.dtype, rows.shape, str(path))
    return RawData({"train": rows}, {}, str(path))


def read_table(path: Path, options=None) -> RawData:
    """A CSV/TSV of numbers: an optional header row (recognized by a non-numeric cell),
    an optional label column named by ``data.labels`` (needs the header)."""
    label_column = getattr(options, "labels", None)
    content = path.read_bytes()
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        lines = list(csv.reader(content.decode("utf-8-sig").splitlines(), delimiter=delimiter))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable text table ({exc}); save it as UTF-8 CSV") from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise DataError(f"{path}: the table is empty")

    def number(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    header = None if all(number(c) for c in lines[0]) else [c.strip() for c in lines[0]]
    body = lines[1:] if header else lines
    width = len(lines[0])
    for i, line in enumerate(body):
        if len(line) != width:
            row = i + (2 if header else 1)
            raise DataError(f"{path}: ragged table: line {row} has {len(line)} fields, the first line {width}; "
                            "give every row the same number of columns")
    if not body:
        raise DataError(f"{path}: a header but no rows")
    label_index = None
    if label_column is not None:
        if header is None or label_column not in header:
            have = ", ".join(header) if header else "no header row"
            raise DataError(f"{path}: no label column {label_column!r} (columns: {have}); "
                            "set data.labels to a column of the header, or leave it out")
        label_index = header.index(label_column)
    columns = [j for j in range(width) if j != label_index]
    values = np.empty((len(body), len(columns)), dtype=np.float64)
    for i, line in enumerate(body):
        for k, j in enumerate(columns):
            try:
                values[i, k] = float(line[j])
            except ValueError:
                name = f"column {header[j]!r}" if header else f"column {j + 1}"
                raise DataError(
                    f"{path}: {name} holds {line[j]!r} on line {i + (2 if header else 1)}, not a number; "
                    "keep only numeric feature columns (name a label column with data.labels)"
                ) from None
    if not columns:
        raise DataError(f"{path}: no feature columns besides the labels")
    integral = np.isfinite(values).all() and np.array_equal(values, np.round(values))
    array = values.astype(np.int64) if integral else values.astype(np.float32)
    labels, names = {}, None
    if label_index is not None:
        labels["train"], names = encode_labels(np.array([line[label_index].strip() for line in body]),
                                               f"{path} (column {label_column!r})")
    return RawData({"train": ArrayRows(array)}, labels, str(path), names, hashlib.sha256(content).hexdigest(),
                   feature_names=[header[j] for j in columns] if header else None)


def read_h5ad(path: Path, options=None) -> RawData:
    """An AnnData file read in place (h5py; anndata's backed sparse datasets)."""
    try:
        import anndata.io
        import h5py
    except ImportError:
        raise DataError(f"{path}: reading .h5ad needs anndata: pip install \"pyro-vae[anndata]\"") from None
    layer = getattr(options, "layer", None)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable .h5ad (HDF5) file ({exc}); check the file") from None
    if layer is None:
        where, element = "X", handle.get("X")
    else:
        layers = handle.get("layers")
        if layers is None or layer not in layers:
            have = ", ".join(layers) if layers is not None and len(layers) else "none"
            raise DataError(f"{path}: no layer {layer!r} (layers: {have}); set data.layer to one of them, or leave it out for X")
        where, element = f"layers[{layer!r}]", layers[layer]
    if element is None:
        raise DataError(f"{path}: no X matrix; name a layer with data.layer")
    matrix = element if isinstance(element, h5py.Dataset) else anndata.io.sparse_dataset(element)
    rows = MatrixRows(matrix, f"{path} {where}")
    _check_numeric(where, rows.dtype, rows.shape, str(path))
    obs = anndata.io.read_elem(handle["obs"])
    labels, names, splits = {}, None, {"train": rows}

    def column(name: str, key: str):
        if name not in obs.columns:
            raise DataError(f"{path}: no obs column {name!r} (obs columns: {', '.join(map(str, obs.columns)) or 'none'}); "
                            f"set {key} to one of them, or leave it out")
        return obs[name].to_numpy()

    label_column = getattr(options, "labels", None)
    all_labels = None
    if label_column is not None:
        all_labels, names = encode_labels(column(label_column, "data.labels"), f"{path} (obs[{label_column!r}])")
    split_column = getattr(options, "split_column", None)
    if split_column is not None:
        assignment = column(split_column, "data.split_column").astype(str)
        unknown = sorted(set(assignment) - set(SPLITS))
        if unknown:
            raise DataError(f"{path}: obs[{split_column!r}] holds {unknown[0]!r}; its values must be train, valid or test")
        origin = {s: np.flatnonzero(assignment == s) for s in SPLITS if (assignment == s).any()}
        splits = {s: subset(rows, origin[s]) for s in origin}
        if all_labels is not None:
            labels = {s: all_labels[assignment == s] for s in splits}
    elif all_labels is not None:
        labels = {"train": all_labels}
    return RawData(splits, labels, str(path), names, origin=origin if split_column is not None else {})


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); check the file") from None
    if len(content) < 4 or content[0:2] != b"\x00\x00" or content[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number); check the file")
    ndim = content[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(content) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    if len(content) - header != math.prod(dims):
        raise DataError(f"{path}: IDX header says {dims} but the file holds {len(content) - header} bytes; the file is truncated or corrupt")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, options=None) -> RawData:
    images = _read_idx(path)
    if images.ndim < 2:
        raise DataError(f"{path}: an IDX image file needs examples x pixels, found shape {images.shape}")
    labels = {}
    label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if label_path != path and label_path.exists():
        values = _read_idx(label_path)
        if len(values) == len(images):
            labels["train"] = values.astype(np.int64)
    return RawData({"train": ArrayRows(images)}, labels, str(path))


READERS = {".npz": read_npz, ".npy": read_npy, ".csv": read_table, ".tsv": read_table, ".h5ad": read_h5ad}


def read_source(name: str | None, path: str | None, options=None) -> RawData:
    """The raw splits of a named data set or a file; ``options`` (a DataSpec) names the
    label column, layer and split column where the format has them."""
    if name is not None:
        return DATASETS.resolve(name)()
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: no such data file; give an existing {FILE_KINDS} file, or --data digits")
    if file.is_dir():
        raise DataError(f"{file}: is a folder; give a data file inside it ({FILE_KINDS})")
    reader = READERS.get(file.suffix.lower())
    if reader is None and "idx" in file.name and "ubyte" in file.name:
        reader = read_idx
    if reader is None:
        raise DataError(f"{file}: unsupported data file; expected {FILE_KINDS}")
    return reader(file, options)
