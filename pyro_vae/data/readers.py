"""Data sources -> :class:`RawData`: row sources per split, labels, and what normalizing needs.

| source | how |
| --- | --- |
| ``digits`` | scikit-learn's bundled 8x8 handwritten digits (levels 0..16, labels), no download |
| ``.npz`` | arrays ``train`` and optionally ``valid``, ``test``, ``<split>_labels``; read whole |
| ``.npy`` | one array (the training split), any trailing shape; rows read from disk on demand |
| ``.csv`` / ``.tsv`` | a numeric table, an optional header row, an optional label column (``data.labels``); read whole, its SHA-256 recorded |
| ``.h5ad`` | AnnData (``pip install "pyro-vae[anndata]"``): ``X`` or ``layers[data.layer]``, dense or CSR/CSC, read in place; labels from ``obs[data.labels]``, splits from ``obs[data.split_column]`` (``obs`` is read only for these) |
| IDX | MNIST ``*-idx3-ubyte[.gz]``, labels from the sibling ``*-idx1-ubyte[.gz]`` |

Nothing is ever unpickled (``allow_pickle=False`` throughout). A file is trusted no further
than :mod:`.checks` allows: a regular file, whose headers declare no more than it can hold
and memory can take, whose sparse matrices are consistent, checked before anything is
allocated or converted. Values are numbers (bool, integers, floats; not dates, times or
complex numbers), in any byte order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import lzma
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..registry import Registry
from .checks import (HDF5_ERRORS, HEADER_ERRORS, check_declared, check_example, check_fits, check_hdf5, corrupt,
                     hdf5_member, in_child, regular_file, size)
from .sources import ArrayRows, MatrixRows, NpyRows, RowSource, SparseRows, subset

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
    covariates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # {split: {name: raw values}}

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
    if dtype.kind not in "biuf":  # not timedelta64 ("m"), which numpy counts among the integers
        raise DataError(f"{source}: array {name!r} has dtype {dtype}; expected numbers (uint8, int or float)")
    if len(shape) < 2 or shape[0] == 0:
        raise DataError(f"{source}: array {name!r} has shape {tuple(shape)}; expected one row per example (N, ...)")
    if 0 in shape[1:]:
        raise DataError(f"{source}: array {name!r} has shape {tuple(shape)}: examples without features; check the file")
    check_example(shape, f"{source}: array {name!r}")
    check_fits(32 * int(shape[0]), f"{source}: array {name!r} of {shape[0]} examples",
               "its examples' row numbers (32 bytes each, for the splits) do not fit; check the file's shape")


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


NPZ_KEYS = (*SPLITS, *(f"{s}_labels" for s in SPLITS))


def _check_npz(archive: zipfile.ZipFile, source: str, keys=NPZ_KEYS) -> None:
    """Each member the reader loads: its declared size against its stored size
    (:func:`~.checks.check_declared`), its ``.npy`` header against its declared size, and
    all of them against memory (they are read whole)."""
    total = 0
    for key in keys:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            continue
        what = f"{source}: array {key!r}"
        check_declared(info.file_size, info.compress_size, what)
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(member)
        if any(n < 0 for n in shape):
            raise DataError(f"{what} declares the negative shape {shape}; the file is corrupt")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise DataError(f"{what} declares shape {shape} ({size(nbytes)}) but holds {size(info.file_size)}; "
                            "the file is truncated or corrupt")
        total += nbytes
    check_fits(total, source, "an .npz is read whole: save the training array as .npy, which is read from disk "
                              "as needed (data.in_memory = false)")


def _labels(array: np.ndarray, rows: int, key: str, source: str) -> np.ndarray:
    if array.ndim != 1 or len(array) != rows:
        raise DataError(f"{source}: {key} has shape {array.shape} but the split has {rows} rows; "
                        f"give one label per row, shape ({rows},)")
    return array


def _covariate_names(options) -> list[str]:
    return list(getattr(options, "covariates", None) or [])


def read_npz(path: Path, options=None) -> RawData:
    source = str(path)
    keys = (*NPZ_KEYS, *(f"{s}_{name}" for s in SPLITS for name in _covariate_names(options)))
    try:
        with zipfile.ZipFile(path) as zipped:
            _check_npz(zipped, source, keys)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in keys if key in archive.files}
            found = archive.files
    except FileNotFoundError:
        raise DataError(f"{source}: no such data file") from None
    except (zipfile.BadZipFile, *HEADER_ERRORS, OSError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: an encrypted member
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{source}: not a readable .npz archive ({exc}); check the file") from None
    splits = {s: _array(s, arrays[s], source) for s in SPLITS if s in arrays}
    if not splits:
        found = ", ".join(sorted(found)) or "nothing"
        raise DataError(f"{source}: no 'train', 'valid' or 'test' array (found {found})")
    shapes = {s: a.row_shape for s, a in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{source}: splits disagree on the example shape {shapes}")
    raw = {split: _labels(arrays[f"{split}_labels"], len(rows), f"{split}_labels", source)
           for split, rows in splits.items() if f"{split}_labels" in arrays}
    if len({values.dtype.kind in "USO" for values in raw.values()}) > 1:
        raise DataError(f"{source}: some splits' labels are names and others numbers; store one kind in every split")
    labels, names = {}, None
    if raw:  # one coding over all splits: names are numbered over their union (a split may lack a class)
        codes, names = encode_labels(np.concatenate(list(raw.values())), f"{source} (labels)")
        ends = np.cumsum([len(values) for values in raw.values()])
        labels = dict(zip(raw, np.split(codes, ends[:-1])))
    covariates = {split: {name: _labels(arrays[f"{split}_{name}"], len(rows), f"{split}_{name}", source)
                          for name in _covariate_names(options) if f"{split}_{name}" in arrays}
                  for split, rows in splits.items()}
    return RawData(splits, labels, source, names, covariates=covariates)


def read_npy(path: Path, options=None) -> RawData:
    """One array; covariate ``name`` is the sibling file ``<stem>.<name>.npy``, one value per row."""
    rows = NpyRows(path)
    _check_numeric("the array", rows.dtype, rows.shape, str(path))
    covariates = {}
    for name in _covariate_names(options):
        sibling = path.with_name(f"{path.stem}.{name}.npy")
        if sibling.is_file():
            regular_file(sibling, ".npy")
            check_fits(sibling.stat().st_size, str(sibling), "a covariate file is read whole; check the file")
            try:
                values = np.load(sibling, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise DataError(f"{sibling}: not a readable .npy of covariate values ({_first(exc)}); check the file") from None
            covariates[name] = _labels(values, len(rows), f"covariate file {sibling.name}", str(path))
    return RawData({"train": rows}, {}, str(path), covariates={"train": covariates})


def _first(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


TABLE_FACTOR = 16  # bytes of memory parsing a table takes per byte of file (Python strings and lists; measured 14x, 13.5x)


def read_table(path: Path, options=None) -> RawData:
    """A CSV/TSV of numbers: an optional header row (recognized by a non-numeric cell),
    an optional label column named by ``data.labels`` (needs the header)."""
    label_column = getattr(options, "labels", None)
    check_fits(TABLE_FACTOR * path.stat().st_size, str(path),
               "a table is parsed whole: save it as .npy, which is read from disk as needed (data.in_memory = false)")
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
    covariate_index = {}
    for name in _covariate_names(options):
        if header is not None and name in header:
            covariate_index[name] = header.index(name)
    columns = [j for j in range(width) if j != label_index and j not in covariate_index.values()]
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
    covariates = {name: _typed_cells([line[j] for line in body]) for name, j in covariate_index.items()}
    return RawData({"train": ArrayRows(array)}, labels, str(path), names, hashlib.sha256(content).hexdigest(),
                   feature_names=[header[j] for j in columns] if header else None, covariates={"train": covariates})


def _typed_cells(cells: list[str]) -> np.ndarray:
    """A table column's cells as integers, else floats (empty cells NaN), else names."""
    cells = [c.strip() for c in cells]
    try:
        return np.array([int(c) for c in cells], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells, dtype=str)


def _h5ad_obs(handle, path: Path, rows: int):
    """``obs`` as a data frame of ``rows`` rows, refused in one line where it is not one."""
    import anndata.io

    obs = hdf5_member(handle, "obs", str(path))
    if obs is None:
        raise DataError(f"{path}: no obs (the cells' annotations), which data.labels and data.split_column read; "
                        "leave them out, or write the file with anndata")
    try:
        frame = anndata.io.read_elem(obs)
    except Exception as exc:  # anndata raises what h5py, pandas or its own registry raise
        raise DataError(f"{path}: obs is not a readable AnnData data frame ({type(exc).__name__}: {exc}); "
                        "write the file with anndata") from None
    if not hasattr(frame, "columns"):
        raise DataError(f"{path}: obs is a plain {type(frame).__name__}, not a data frame of annotations; "
                        "write the file with anndata")
    if len(frame) != rows:
        raise DataError(f"{path}: obs has {len(frame)} rows but the matrix {rows}; the file is corrupt")
    return frame


def read_h5ad(path: Path, options=None) -> RawData:
    """An AnnData file read in place (h5py), its sizes and sparse structure checked first,
    in a child process (:func:`~.checks.in_child`): libhdf5 can hang or crash on a crafted
    file's metadata, which then is one line instead of a hung or killed process."""
    try:
        import anndata.io  # noqa: F401  (the extra, named in the message when missing)
        import h5py  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: reading .h5ad needs anndata: pip install \"pyro-vae[anndata]\"") from None
    in_child(_open_h5ad, (path, options), f"{path}: reading its HDF5 structure")
    return _open_h5ad(path, options)


def _open_h5ad(path: Path, options=None) -> RawData:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable .h5ad (HDF5) file ({exc}); check the file") from None
    try:
        return _read_h5ad(handle, path, options)
    except (DataError, *HDF5_ERRORS) as exc:
        handle.close()  # kept open only for a source read in place
        raise exc if isinstance(exc, DataError) else corrupt(str(path), exc) from None


def _read_h5ad(handle, path: Path, options) -> RawData:
    import h5py

    layer = getattr(options, "layer", None)
    check_hdf5(handle, path)
    if layer is None:
        where, element = "X", hdf5_member(handle, "X", str(path))
    else:
        layers = hdf5_member(handle, "layers", str(path))
        if not isinstance(layers, h5py.Group) or layer not in layers:
            have = ", ".join(layers) if isinstance(layers, h5py.Group) and len(layers) else "none"
            raise DataError(f"{path}: no layer {layer!r} (layers: {have}); set data.layer to one of them, or leave it out for X")
        where, element = f"layers[{layer!r}]", hdf5_member(layers, layer, f"{path} layers")
    if element is None:
        raise DataError(f"{path}: no X matrix; name a layer with data.layer")
    if isinstance(element, h5py.Dataset):
        rows = MatrixRows(element, f"{path} {where}")
    elif isinstance(element, h5py.Group):
        rows = SparseRows(element, f"{path} {where}")
    else:
        raise DataError(f"{path}: {where} is neither a matrix nor a sparse group; check the file")
    _check_numeric(where, rows.dtype, rows.shape, str(path))
    labels, names, splits = {}, None, {"train": rows}
    label_column = getattr(options, "labels", None)
    split_column = getattr(options, "split_column", None)
    wanted = _covariate_names(options)
    obs = _h5ad_obs(handle, path, len(rows)) if label_column is not None or split_column is not None or wanted else None

    def column(name: str, key: str):
        if name not in obs.columns:
            raise DataError(f"{path}: no obs column {name!r} (obs columns: {', '.join(map(str, obs.columns)) or 'none'}); "
                            f"set {key} to one of them, or leave it out")
        return obs[name].to_numpy()

    all_labels = None
    if label_column is not None:
        all_labels, names = encode_labels(column(label_column, "data.labels"), f"{path} (obs[{label_column!r}])")
    origin = {}
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
    present = {name: obs[name].to_numpy() for name in wanted if name in obs.columns}
    covariates = {s: {name: v[origin[s]] if origin else v for name, v in present.items()} for s in splits}
    return RawData(splits, labels, str(path), names, origin=origin, covariates=covariates)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes: its dimensions read first and checked against the
    file's size (exactly; a .gz against the decompression limit) and memory, then exactly
    the bytes they declare."""
    compressed = path.name.endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0:2] != b"\x00\x00" or head[2] != 0x08:
                raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number); check the file")
            ndim = head[3]
            dims_bytes = f.read(4 * ndim)
            if ndim == 0 or len(dims_bytes) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            count, stored = math.prod(dims), path.stat().st_size
            if compressed:
                check_declared(count, stored, f"{path}: the IDX header")
            elif count != stored - 4 - 4 * ndim:
                raise DataError(f"{path}: IDX header says {dims} but the file holds {stored - 4 - 4 * ndim} bytes; "
                                "the file is truncated or corrupt")
            check_fits(count, str(path), "an IDX file is read whole; check its header")
            content = f.read(count + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); check the file") from None
    if len(content) != count:
        raise DataError(f"{path}: IDX header says {dims} but the file holds {len(content)} bytes; the file is truncated or corrupt")
    return np.frombuffer(content, dtype=np.uint8).reshape(dims)


def read_idx(path: Path, options=None) -> RawData:
    images = _read_idx(path)
    if images.ndim < 2:
        raise DataError(f"{path}: an IDX image file needs examples x pixels, found shape {images.shape}")
    _check_numeric("the images", images.dtype, images.shape, str(path))
    labels = {}
    label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if label_path != path and label_path.is_file():
        values = _read_idx(label_path)
        if values.ndim == 1 and len(values) == len(images):
            labels["train"] = values.astype(np.int64)
    return RawData({"train": ArrayRows(images)}, labels, str(path))


READERS = {".npz": read_npz, ".npy": read_npy, ".csv": read_table, ".tsv": read_table, ".h5ad": read_h5ad}


def read_source(name: str | None, path: str | None, options=None) -> RawData:
    """The raw splits of a named data set or a file; ``options`` (a DataSpec) names the
    label column, layer and split column where the format has them."""
    if name is not None:
        return with_label_covariate(DATASETS.resolve(name)(), _covariate_names(options))
    file = Path(path)
    regular_file(file, FILE_KINDS)
    reader = READERS.get(file.suffix.lower())
    if reader is None and "idx" in file.name and "ubyte" in file.name:
        reader = read_idx
    if reader is None:
        raise DataError(f"{file}: unsupported data file; expected {FILE_KINDS}")
    return with_label_covariate(reader(file, options), _covariate_names(options))


def with_label_covariate(raw: RawData, names) -> RawData:
    """The source's labels as the covariate ``label`` where it is named and the reader did not
    find a column of that name: the IDX label file, npz ``<split>_labels``, the digits'
    classes, a ``data.labels`` column (by their names where they are strings)."""
    if "label" not in names:
        return raw
    for split in raw.splits:
        found = raw.covariates.setdefault(split, {})
        if "label" not in found and split in raw.labels:
            codes = raw.labels[split]
            found["label"] = np.asarray(raw.label_names)[codes] if raw.label_names else codes
    return raw
