"""Prepared splits, in memory or streamed from disk, and the training batches drawn from them.

A split is either a float32 tensor on the device (the data fit the memory budget) or a
:class:`StreamedSplit`: the same rows, read from their :class:`~.sources.RowSource` on
demand, prepared by the same elementwise :class:`Preprocessing` and binarized by the
same counter-based draws (:func:`binarize`), so that every row is bit-identical
whichever way it is held. Training batches of a streamed split are read ahead by a
background thread (:class:`Prefetcher`); random numbers are drawn only in the training
thread, in the order the in-memory path draws them, so results and ``--resume`` are
exact either way.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .covariates import CovariateCoding
from .sources import CHUNK_BYTES, RowSource

SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}
_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' "lowbias32") of int64 values in [0, 2^32). The
    products wrap in int64, and their low 32 bits, which the mask keeps, are exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def binarize(p: Tensor, seed: int, split: str, rows: Tensor) -> Tensor:
    """x ~ Bernoulli(p) drawn once per (seed, split, row, feature): x = [u < p] with u a hash
    of those four numbers on a 2^-24 grid. A counter-based draw, so any subset of rows
    read in any order (a streamed batch) gets the values a whole split binarized at once
    gets; torch's generators cannot jump to a row's offset."""
    key = _mix32(torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32, SPLIT_IDS[split]], dtype=torch.int64))
    base = int(_mix32(key[0] ^ _mix32(key[1] ^ _mix32(key[2]))))
    per_row = _mix32(torch.as_tensor(rows, dtype=torch.int64).cpu() ^ base)
    features = torch.arange(p[0].numel() if len(p) else 0, dtype=torch.int64)
    u = (_mix32(per_row[:, None] ^ _mix32(features + 0x9E3779B9)[None, :]) >> 8).to(torch.float32) * 2.0**-24
    return (u.to(p.device).view_as(p) < p).to(p.dtype)


@dataclass
class Preprocessing:
    """The elementwise map from stored values to what the model sees:
    x -> (x / divide - mean) / sd (each step only where set). Stored in the run, so that
    new data can be prepared as the training data were (``Run.prepare``)."""

    divide: Optional[float] = None
    mean: Optional[Tensor] = None
    sd: Optional[Tensor] = None
    low: Optional[float] = None  # the prepared training data's range, which new data are held to
    high: Optional[float] = None
    binarized: bool = False  # data.binarize: the model sees Bernoulli draws of these intensities (not kept)

    def apply(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if self.divide:
            x = x / self.divide
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.sd.to(x.device)
        return x

    def log_jacobian(self, data_shape: tuple[int, ...]) -> float:
        """log |det d(prepared)/d(given)| for one example, the normalize division left out:
        -sum_j log sd_j over its features (0 without standardization). A density of the
        prepared data plus this is the density of the data in their own units."""
        if self.sd is None:
            return 0.0
        return -float(torch.log(self.sd.double()).expand(data_shape).sum())

    def units(self, data_shape: tuple[int, ...], density: bool = True) -> str:
        """The units the ELBO and log p(x) of these data are reported in, in words."""
        if not density:
            if self.binarized:
                scaled = f" / {self.divide:g}" if self.divide else ""
                return f"nats per example of the binary draws (data.binarize: each value{scaled} the probability of a 1)"
            divided = f" of the levels divided by {self.divide:g} (data.normalize)" if self.divide else ""
            return f"nats per example{divided}"
        if self.binarized:
            return "nats per example, a density at the binary draws (data.binarize), not comparable with a probability"
        if self.divide:
            shift = math.prod(data_shape) * math.log(self.divide)
            standardized = ", the standardization's log-Jacobian included" if self.sd is not None else ""
            return (f"nats per example, a density of the data divided by {self.divide:g} (data.normalize){standardized}; "
                    f"in the stored values' units subtract {shift:.1f} ({math.prod(data_shape)} log {self.divide:g})")
        if self.sd is not None:
            return "nats per example, a density in the data's own units (the standardization's log-Jacobian included)"
        return "nats per example, a density in the data's own units"

    def state(self) -> dict:
        """Tensors only (checkpoints hold nothing else)."""
        state = {"divide": torch.tensor(float(self.divide or 0.0))}
        if self.mean is not None:
            state.update(mean=self.mean.cpu(), sd=self.sd.cpu())
        if self.low is not None:
            state["range"] = torch.tensor([self.low, self.high], dtype=torch.float64)
        return state

    @classmethod
    def from_state(cls, state: Optional[dict]) -> "Preprocessing":
        if not state:
            return cls()
        divide = float(state["divide"]) or None
        low, high = state["range"].tolist() if "range" in state else (None, None)
        return cls(divide, state.get("mean"), state.get("sd"), low, high)


class StreamedSplit:
    """A split read from its source on demand: indexing with a slice, an index tensor or
    array gives the prepared rows as a float32 tensor on ``device``; the whole is never
    held. ``binarize_seed`` draws the split's static binarization (see :func:`binarize`)."""

    dtype = torch.float32

    def __init__(self, rows: RowSource, name: str, preprocessing: Preprocessing, device="cpu",
                 binarize_seed: Optional[int] = None, row_shape: Optional[tuple] = None):
        self.rows, self.name, self.preprocessing = rows, name, preprocessing
        self.device = torch.device(device)
        self.binarize_seed = binarize_seed
        self.row_shape = tuple(row_shape or rows.row_shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.row_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index, pin: bool = False) -> Tensor:
        """Rows ``index`` prepared on the CPU (pinned when asked), not yet on the device."""
        index = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64).reshape(-1)
        x = self.preprocessing.apply(torch.from_numpy(self.rows.read(index)))
        x = x.reshape(len(index), *self.row_shape)
        if self.binarize_seed is not None:
            x = binarize(x, self.binarize_seed, self.name, torch.from_numpy(index))
        return x.pin_memory() if pin else x

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, slice):
            index = np.arange(len(self))[key]
        elif isinstance(key, int):
            return self[key : key + 1 if key != -1 else None][0]
        else:
            index = key
        return self.load(index, pin=self.device.type == "cuda").to(self.device, non_blocking=True)

    def _with(self, **changes) -> "StreamedSplit":
        settings = {"device": self.device, "binarize_seed": self.binarize_seed, "row_shape": self.row_shape, **changes}
        return StreamedSplit(self.rows, self.name, self.preprocessing, **settings)

    def to(self, device) -> "StreamedSplit":
        return self._with(device=device)

    def reshape(self, n: int, *shape) -> "StreamedSplit":
        if n != len(self):
            raise ValueError("a streamed split keeps its rows; only the row shape changes")
        return self._with(row_shape=tuple(shape))

    def binarized(self, seed: int) -> "StreamedSplit":
        return self._with(binarize_seed=seed)


def split_chunks(x: Tensor | StreamedSplit, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Tensor]:
    """A split, in memory or streamed, as tensors of consecutive rows, each about
    ``chunk_bytes`` as float32: whole-split passes (checks, statistics) hold one chunk's
    temporaries, not the split's."""
    rows = max(1, chunk_bytes // max(1, 4 * math.prod(x.shape[1:])))
    for start in range(0, len(x), rows):
        yield x[start : start + rows]


class Prefetcher:
    """Runs ``load(item)`` for each item in a background thread, ``depth`` items ahead; the
    results come out in order. An error in the thread is raised in the consumer; leaving
    the ``with`` block stops the thread."""

    def __init__(self, load: Callable, items: Iterable, depth: int = 3):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(load, iter(items)), daemon=True, name="pyro-vae-prefetch")

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, load, items) -> None:
        try:
            for item in items:
                if self.stop.is_set() or not self._put(("item", load(item))):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))

    def __enter__(self) -> Iterator:
        self.thread.start()
        return self._results()

    def _results(self) -> Iterator:
        while True:
            kind, value = self.queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Dataset:
    """Prepared splits: float32 tensors, or :class:`StreamedSplit` s read from disk.

    ``dynamic`` marks a training split of Bernoulli intensities that :meth:`batch`
    binarizes anew at every call. ``preprocessing`` is what turned stored values into
    these (the run keeps it); ``label_names`` the names of string labels' codes;
    ``sha256`` the hash of a file read whole (CSV), which a resumed run compares;
    ``origin`` each split's row numbers in the array it was drawn from; ``drawn`` the
    held-out splits drawn from the source's training rows ({split: rows}); ``covariates``
    each split's coded covariates c (n, K) and ``coding`` how they were coded
    (:mod:`.covariates`).
    """

    splits: dict[str, Tensor | StreamedSplit]
    labels: dict[str, Tensor]
    data_shape: tuple[int, ...]
    source: str
    dynamic: bool = False
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    label_names: Optional[list[str]] = None
    sha256: Optional[str] = None
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # each split's rows in the source's array
    drawn: dict[str, int] = field(default_factory=dict)  # held-out splits carved from the training rows
    feature_names: Optional[list[str]] = None  # a CSV header's, which label the figures' features
    max_level: Optional[int] = None  # the source's largest integer level where it knows one (digits: 16), undivided
    covariates: dict[str, Tensor] = field(default_factory=dict)  # {split: c (n, K)}, see data/covariates.py
    coding: CovariateCoding = field(default_factory=CovariateCoding)  # how c was coded (kept by the run)

    @property
    def streamed(self) -> bool:
        return any(isinstance(s, StreamedSplit) for s in self.splits.values())

    def split(self, name: str) -> Tensor | StreamedSplit:
        if name not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise DataError(f"{self.source}: no {name!r} split (this data has: {have}); choose another split")
        return self.splits[name]

    def scored(self, name: str, seed: int) -> Tensor | StreamedSplit:
        """A split as held-out scoring sees it: a dynamically binarized training split is
        binarized once with ``seed`` (the model was trained on binary draws, not on the
        intensities), as the other splits were when prepared."""
        x = self.split(name)
        if not (self.dynamic and name == "train"):
            return x
        if isinstance(x, StreamedSplit):
            return x.binarized(seed)
        return binarize(x, seed, name, torch.arange(len(x)))

    def batch(self, index: Tensor, generator: torch.Generator | None = None, rows: slice = slice(None)) -> Tensor:
        """Training rows ``index[rows]``. A dynamic binarization draws the whole of ``index``
        (so ``generator`` advances alike whatever ``rows``: every rank of a global batch
        keeps the one-process data stream) and keeps ``rows``."""
        train = self.splits["train"]
        if self.dynamic:
            return torch.bernoulli(train[index], generator=generator)[rows]
        return train[index[rows]]

    def batches(self, indices: Iterable[Tensor], generator: torch.Generator | None = None,
                rows: slice = slice(None)) -> Iterator[Tensor]:
        """:meth:`batch` for each index in turn. A streamed training split is read ahead in a
        background thread; the dynamic binarization's draws stay in this thread, one batch
        at a time, so ``generator`` is where the in-memory path would leave it."""
        train = self.splits["train"]
        if not isinstance(train, StreamedSplit):
            for index in indices:
                yield self.batch(index, generator, rows)
            return
        pin = train.device.type == "cuda"

        def load(index):
            return train.load(index if self.dynamic else index[rows], pin).to(train.device, non_blocking=True)

        with Prefetcher(load, indices) as fetched:
            for x in fetched:
                yield torch.bernoulli(x, generator=generator)[rows] if self.dynamic else x

    def to(self, device) -> "Dataset":
        return replace(
            self,
            splits={k: v.to(device) for k, v in self.splits.items()},
            labels={k: v.to(device) for k, v in self.labels.items()},
            covariates={k: v.to(device) for k, v in self.covariates.items()},
        )
