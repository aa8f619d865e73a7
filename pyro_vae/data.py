"""Data sets -> float32 tensors on the device, moved there once.

Sources: a named data set (``digits``: scikit-learn's bundled 8x8 handwritten digits,
no download), an ``.npz`` file with arrays ``train`` and optionally ``valid`` and
``test`` (and ``<split>_labels``), or MNIST IDX files (``*-idx3-ubyte[.gz]``, labels
read from the sibling ``*-idx1-ubyte[.gz]`` file when it is there).

Preparation, in order: a validation split drawn at random with the seed when the
source has none (files can be sorted by class, so never the tail); integer levels
divided by their maximum (``normalize``: 16 for digits; for files, one rule whatever
the format and integer dtype, see :func:`integer_levels`);
``binarize`` = ``static`` (x ~ Bernoulli(intensity), drawn once) or ``dynamic`` (the
training set redrawn at every batch; held-out splits drawn once); then a check of
every split against the likelihood's support.
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .registry import Registry

DATASETS = Registry("data set")
SPLITS = ("train", "valid", "test")


@dataclass
class RawData:
    """Arrays as read from the source, before preparation."""

    splits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    max_level: Optional[int] = None  # integer levels 0..max_level that normalize divides
    source: str = ""


@DATASETS.register("digits")
def digits() -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, levels 0..16, labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawData(
        {"train": bunch.data.astype(np.float32)},
        {"train": bunch.target.astype(np.int64)},
        max_level=16,
        source="digits",
    )


def _check_array(name: str, array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{source}: array {name!r} has dtype {array.dtype}; expected numbers (uint8, int or float)")
    if array.ndim < 2 or len(array) == 0:
        raise DataError(f"{source}: array {name!r} has shape {array.shape}; expected one row per example (N, ...)")
    return array


def integer_levels(arrays) -> Optional[int]:
    """The number ``normalize`` divides a file's arrays by, the same for every format:
    255 when every array is of an integer dtype (uint8, int64, ...) with values in
    0..255 and some above 1 (8-bit levels); None otherwise: integers that are all 0/1
    are binary data and stay as they are, larger integers are counts, floats are
    taken as they are."""
    arrays = list(arrays)
    if not arrays or not all(np.issubdtype(a.dtype, np.integer) for a in arrays):
        return None
    lowest, highest = min(int(a.min()) for a in arrays), max(int(a.max()) for a in arrays)
    return 255 if lowest >= 0 and 1 < highest <= 255 else None


def read_npz(path: Path) -> RawData:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{source}: no such data file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npz archive ({exc}); check the file") from None
    splits = {s: _check_array(s, arrays[s], source) for s in SPLITS if s in arrays}
    if not splits:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(f"{source}: no 'train', 'valid' or 'test' array (found {found})")
    shapes = {s: a.shape[1:] for s, a in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{source}: splits disagree on the example shape {shapes}")
    labels = {}
    for split in splits:
        key = f"{split}_labels"
        if key in arrays:
            if len(arrays[key]) != len(splits[split]):
                raise DataError(f"{source}: {key} has {len(arrays[key])} rows but {split} has {len(splits[split])}")
            labels[split] = arrays[key]
    return RawData(splits, labels, integer_levels(splits.values()), source)


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


def read_idx(path: Path) -> RawData:
    images = _read_idx(path)
    if images.ndim < 2:
        raise DataError(f"{path}: an IDX image file needs examples x pixels, found shape {images.shape}")
    labels = {}
    label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if label_path != path and label_path.exists():
        values = _read_idx(label_path)
        if len(values) == len(images):
            labels["train"] = values.astype(np.int64)
    return RawData({"train": images}, labels, integer_levels([images]), str(path))


def read_source(name: str | None, path: str | None) -> RawData:
    if name is not None:
        return DATASETS.resolve(name)()
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: no such data file; give an existing .npz or IDX file, or --data digits")
    if file.is_dir():
        raise DataError(f"{file}: is a folder; give an .npz file or an IDX file inside it")
    if file.suffix == ".npz":
        return read_npz(file)
    if "idx" in file.name and "ubyte" in file.name:
        return read_idx(file)
    raise DataError(f"{file}: unsupported data file; expected .npz or MNIST IDX (*-idx3-ubyte[.gz])")


@dataclass
class Dataset:
    """Prepared splits as float32 tensors on one device.

    ``dynamic`` marks a training split of Bernoulli intensities that :meth:`batch`
    binarizes anew at every call.
    """

    splits: dict[str, Tensor]
    labels: dict[str, Tensor]
    data_shape: tuple[int, ...]
    source: str
    dynamic: bool = False

    def split(self, name: str) -> Tensor:
        if name not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise DataError(f"{self.source}: no {name!r} split (this data has: {have}); choose another split")
        return self.splits[name]

    def scored(self, name: str, seed: int) -> Tensor:
        """A split as held-out scoring sees it: a dynamically binarized training split is
        binarized once with ``seed`` (the model was trained on binary draws, not on the
        intensities), as the other splits were when prepared."""
        x = self.split(name)
        if self.dynamic and name == "train":
            return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))
        return x

    def batch(self, index: Tensor, generator: torch.Generator | None = None, rows: slice = slice(None)) -> Tensor:
        """Training rows ``index[rows]``. A dynamic binarization draws the whole of ``index``
        (so ``generator`` advances alike whatever ``rows``: every rank of a global batch
        keeps the one-process data stream) and keeps ``rows``."""
        if self.dynamic:
            return torch.bernoulli(self.splits["train"][index], generator=generator)[rows]
        return self.splits["train"][index[rows]]

    def to(self, device) -> "Dataset":
        return replace(
            self,
            splits={k: v.to(device) for k, v in self.splits.items()},
            labels={k: v.to(device) for k, v in self.labels.items()},
        )


def _draw_validation(raw: RawData, fraction: float, seed: int) -> RawData:
    if "valid" in raw.splits or "train" not in raw.splits:
        return raw
    train = raw.splits["train"]
    n_valid = max(1, int(round(fraction * len(train))))
    if n_valid >= len(train):
        raise DataError(f"{raw.source}: {len(train)} examples are too few for a validation split of {fraction}")
    order = np.random.default_rng(seed).permutation(len(train))
    valid_rows, train_rows = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    splits = {**raw.splits, "train": train[train_rows], "valid": train[valid_rows]}
    labels = dict(raw.labels)
    if "train" in labels:
        labels["valid"], labels["train"] = labels["train"][valid_rows], labels["train"][train_rows]
    return replace(raw, splits=splits, labels=labels)


def divides_levels(normalize, likelihood=None) -> bool:
    """Whether integer levels are divided by their maximum: ``normalize = "auto"`` keeps
    them for a likelihood of integer values (``raw_integers``: categorical, discretized
    logistic, counts) and divides them for every other (values in [0, 1], reals);
    ``true`` and ``false`` force either. ``likelihood`` is a Likelihood or its class."""
    if normalize == "auto":
        return not getattr(likelihood, "raw_integers", False)
    return bool(normalize)


def prepare(raw: RawData, spec, seed: int, likelihood=None) -> Dataset:
    """Split, normalize and binarize ``raw`` as ``spec`` (a DataSpec) says, on the CPU
    (``likelihood``, a Likelihood or its class, decides ``normalize = "auto"``)."""
    raw = _draw_validation(raw, spec.valid_fraction, seed)
    splits = {}
    divide = divides_levels(spec.normalize, likelihood)
    for name, array in raw.splits.items():
        x = torch.as_tensor(np.asarray(array, dtype=np.float32))
        if divide and raw.max_level:
            x = x / raw.max_level
        splits[name] = x
    dynamic = spec.binarize == "dynamic"
    if spec.binarize != "none":
        generator = torch.Generator().manual_seed(seed)
        for name, x in splits.items():
            if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise DataError(
                    f"{raw.source}: data.binarize = {spec.binarize!r} needs intensities in [0, 1] but the "
                    f"{name} split spans {x.min().item():g}..{x.max().item():g}: set data.normalize = true "
                    "(for 8-bit data) or data.binarize = \"none\""
                )
            if not (dynamic and name == "train"):
                splits[name] = torch.bernoulli(x, generator=generator)
    shape = next(iter(splits.values())).shape[1:]
    labels = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in raw.labels.items()}
    return Dataset(splits, labels, tuple(shape), raw.source, dynamic)


def check_support(data: Dataset, likelihood) -> None:
    """Refuse data outside the likelihood's support, naming the fix."""
    for name in data.splits:
        problem = likelihood.check(data.scored(name, seed=0), f"{data.source} ({name} split)")
        if problem:
            raise DataError(problem)


def load_data(spec, seed: int, likelihood=None, device="cpu") -> Dataset:
    """Read, prepare, check against ``likelihood`` (when given) and move to ``device``.
    ``likelihood`` is a Likelihood (then the data are checked against its support) or a
    Likelihood class (which only decides ``normalize = "auto"``)."""
    data = prepare(read_source(spec.name, spec.path), spec, seed, likelihood)
    if likelihood is not None and not isinstance(likelihood, type):
        check_support(data, likelihood)
    return data.to(device)
