"""Raw splits -> a :class:`~.dataset.Dataset`, in memory or streamed.

Preparation, in order:

1. **Splits.** A source without a test split gets one drawn at random with the seed
   (``test_fraction``), and one without a validation split a validation split
   (``valid_fraction``): files can be sorted by class, so never the tail.
2. **Normalize.** Integer levels are divided by their maximum (16 for digits, 255 for
   8-bit files; :func:`~.readers.integer_levels`) when ``normalize`` says so: with
   ``"auto"`` for every likelihood but those of integer values (:func:`divides_levels`).
3. **Standardize** (``standardize = true``: one mean and sd; ``"per_feature"``: per
   feature; ``"auto"``: per feature for a likelihood of real values, see
   :func:`standardizes`): x -> (x - mean) / sd with both computed on the training split.
   Reported ELBOs and log p(x) add the log-Jacobian -sum_j log sd_j, so they are
   densities of the data in their own units (``Likelihood.use_data_units``).
4. **Binarize.** ``static``: x ~ Bernoulli(intensity) drawn once (:func:`~.dataset.binarize`);
   ``dynamic``: the training set redrawn at every batch, held-out splits drawn once.

Where the data live. ``in_memory = "auto"`` holds the prepared splits as float32
tensors when they fit a memory budget (a quarter of the available RAM, and half of the
free GPU memory when training on CUDA) and streams them from their source otherwise;
``true`` and ``false`` force either. Both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from ..errors import DataError
from .checks import available_memory
from .covariates import CovariateCoding
from .dataset import Dataset, Preprocessing, StreamedSplit, binarize, split_chunks
from .statistics import DataStatistics
from .readers import RawData, read_source
from .sources import RowSource, subset


def draw_splits(raw: RawData, valid_fraction: float, test_fraction: float, seed: int) -> RawData:
    """Draw the missing test and validation splits from the training split, at random with
    ``seed``: one permutation, test rows first, then validation rows."""
    if "train" not in raw.splits:
        return raw
    want_test = "test" not in raw.splits and test_fraction > 0
    want_valid = "valid" not in raw.splits
    if not (want_test or want_valid):
        return raw
    n = len(raw.splits["train"])
    n_test = max(1, int(round(test_fraction * n))) if want_test else 0
    n_valid = max(1, int(round(valid_fraction * n))) if want_valid else 0
    if n_test + n_valid >= n:
        raise DataError(f"{raw.source}: {n} examples are too few for the held-out splits (valid_fraction "
                        f"{valid_fraction}, test_fraction {test_fraction}); lower them or bring more data")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid :]}
    parts = {k: np.sort(v) for k, v in parts.items() if len(v)}
    train, labels = raw.splits["train"], dict(raw.labels)
    splits = {**raw.splits, **{k: subset(train, v) for k, v in parts.items()}}
    if "train" in raw.labels:
        labels.update({k: raw.labels["train"][v] for k, v in parts.items()})
    covariates = dict(raw.covariates)
    if "train" in raw.covariates:
        covariates.update({k: {name: values[v] for name, values in raw.covariates["train"].items()} for k, v in parts.items()})
    base = raw.origin.get("train", np.arange(n))
    origin = {**raw.origin, **{k: base[v] for k, v in parts.items()}}
    return replace(raw, splits=splits, labels=labels, origin=origin, covariates=covariates)


def divides_levels(normalize, likelihood=None) -> bool:
    """Whether integer levels are divided by their maximum: ``normalize = "auto"`` keeps
    them for a likelihood of integer values (``raw_integers``: categorical, discretized
    logistic, counts) and divides them for every other (values in [0, 1], reals);
    ``true`` and ``false`` force either. ``likelihood`` is a Likelihood or its class."""
    if normalize == "auto":
        return not getattr(likelihood, "raw_integers", False)
    return bool(normalize)


def standardizes(standardize, likelihood=None, binarize: str = "none"):
    """What ``standardize`` does: ``"auto"`` standardizes per feature for a likelihood of real
    values (its support unbounded: gaussian, laplace, student_t), whose fit depends on the
    data's location and scale, and not for levels, counts, values in [0, 1], binarized data
    or without a likelihood; ``true`` (one mean and sd), ``"per_feature"`` and ``false`` force."""
    if standardize != "auto":
        return standardize
    domain = getattr(likelihood, "domain", None)
    real = domain is not None and tuple(domain.bounds) == (None, None)
    return "per_feature" if real and binarize == "none" else False


def memory_budget(device=None) -> int:
    """Bytes that prepared data may take in memory: a quarter of the available RAM (the
    float32 copy is made beside the source's values), and half of the free GPU memory when
    the data go to a GPU."""
    budget = available_memory() // 4
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(device)[0] // 2)
    return budget


def _standardization(train: RowSource, divide: Optional[float], mode) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sd) of the training split after division, one pair or one per feature; a
    constant feature gets sd 1 (it is only centred)."""
    statistics = DataStatistics.of(Preprocessing(divide).apply(torch.from_numpy(rows)) for _, rows in train.chunks())
    mean, variance = (statistics.mean, statistics.sd.square()) if mode == "per_feature" else statistics.pooled()
    sd = torch.where(variance > 0, variance.sqrt(), torch.ones_like(variance))
    return mean.float(), sd.float()


def _in_memory(rows: RowSource, name: str, preprocessing: Preprocessing, binarize_seed: Optional[int]) -> torch.Tensor:
    """The whole split as one float32 tensor, prepared chunk by chunk exactly as a streamed
    split prepares its rows."""
    out = torch.empty((len(rows), *rows.row_shape), dtype=torch.float32)
    for start, chunk in rows.chunks():
        x = preprocessing.apply(torch.from_numpy(chunk))
        if binarize_seed is not None:
            x = binarize(x, binarize_seed, name, torch.arange(start, start + len(x)))
        out[start : start + len(x)] = x
    return out


def prepare(raw: RawData, spec, seed: int, likelihood=None, device=None, preprocessing: Optional[Preprocessing] = None,
            coding: Optional[CovariateCoding] = None) -> Dataset:
    """Split, normalize, standardize and binarize ``raw`` as ``spec`` (a DataSpec) says
    (``likelihood``, a Likelihood or its class, decides ``normalize = "auto"``), held in
    memory or streamed as ``spec.in_memory`` and the memory budget for ``device`` say.
    ``preprocessing``, when given (a trained run's), replaces normalizing and
    standardizing from these data: new data are prepared as the training data were; so does
    ``coding`` (a trained run's :class:`~.covariates.CovariateCoding`) for fitting the
    covariates' coding (``spec.covariates``) on the training split."""
    given = set(raw.splits)
    raw = draw_splits(raw, spec.valid_fraction, spec.test_fraction, seed)
    drawn = {k: len(rows) for k, rows in raw.splits.items() if k not in given}  # carved from the training rows
    standardize = standardizes(spec.standardize, likelihood, spec.binarize)
    if preprocessing is None:
        divide = raw.max_level if divides_levels(spec.normalize, likelihood) and raw.max_level else None
        preprocessing = Preprocessing(float(divide) if divide else None)
        if standardize and "train" in raw.splits:
            preprocessing.mean, preprocessing.sd = _standardization(raw.splits["train"], preprocessing.divide, standardize)
    if spec.binarize != "none":
        preprocessing = replace(preprocessing, binarized=True)
        if standardize:
            raise DataError(f"{raw.source}: data.binarize and data.standardize exclude each other (binarizing needs "
                            "intensities in [0, 1]); turn one off")
        for name, rows in raw.splits.items():
            _check_intensities(rows, name, preprocessing, raw, spec.binarize)
    dense = sum(rows.dense_bytes for rows in raw.splits.values())
    choice = spec.in_memory
    if choice is True and dense > available_memory():
        raise DataError(
            f"{raw.source}: holding the data in memory as dense float32 needs {dense / 2**30:.1f} GiB, more than the "
            f"{available_memory() / 2**30:.1f} GiB available; set data.in_memory = \"auto\" (or false) to stream them"
        )
    stream = choice is False or (choice == "auto" and dense > memory_budget(device))
    dynamic = spec.binarize == "dynamic"
    splits = {}
    for name, rows in raw.splits.items():
        binarize_seed = seed if spec.binarize != "none" and not (dynamic and name == "train") else None
        if stream:
            splits[name] = StreamedSplit(rows, name, preprocessing, "cpu", binarize_seed)
        else:
            splits[name] = _in_memory(rows, name, preprocessing, binarize_seed)
    shape = next(iter(raw.splits.values())).row_shape
    labels = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in raw.labels.items()}
    origin = {k: raw.origin.get(k, np.arange(len(rows))) for k, rows in raw.splits.items()}
    max_level = raw.max_level if preprocessing.divide is None and preprocessing.mean is None else None
    if coding is None:
        names = list(getattr(spec, "covariates", None) or [])
        coding = CovariateCoding.fit(raw.covariates.get("train", {}), names, getattr(spec, "covariate_kinds", None) or {},
                                     f"{raw.source} (train split)", seed) if names else CovariateCoding()
    covariates = {k: coding.encode(raw.covariates.get(k, {}), f"{raw.source} ({k} split)") for k in raw.splits} \
        if coding else {}
    return Dataset(splits, labels, tuple(shape), raw.source, dynamic, preprocessing, raw.label_names, raw.sha256, origin,
                   drawn, raw.feature_names, max_level, covariates, coding)


def _check_intensities(rows: RowSource, name: str, preprocessing: Preprocessing, raw: RawData, mode: str) -> None:
    source = raw.source
    low, high = math.inf, -math.inf
    for _, chunk in rows.chunks():
        x = preprocessing.apply(torch.from_numpy(chunk))
        if not torch.isfinite(x).all():
            raise DataError(f"{source} ({name} split) contains NaN or infinite values; clean the data before training")
        low, high = min(low, x.min().item()), max(high, x.max().item())
    if low < 0 or high > 1:
        if raw.max_level and preprocessing.divide is None:
            hint = f"set data.normalize = true (integer levels 0..{raw.max_level} are kept as they are)"
        else:
            hint = "rescale the data into [0, 1] first, or set data.binarize = \"none\""
        raise DataError(
            f"{source}: data.binarize = {mode!r} needs intensities in [0, 1] but the {name} split spans "
            f"{low:g}..{high:g}: {hint}"
        )


def check_support(data: Dataset, likelihood) -> None:
    """Refuse data outside the likelihood's support, naming the fix (chunk by chunk: the
    message's span and count are those of the first chunk with values outside)."""
    for name in data.splits:
        x = data.scored(name, seed=0)
        where = f"{data.source} ({name} split)"
        for part in split_chunks(x):
            problem = likelihood.check(part, where)
            if problem:
                raise DataError(problem)


def largest_level(data: Dataset) -> int:
    """The largest level L of integer data, for a likelihood over the levels 0..L: the
    source's own maximum where it knows one (16 for the digits, 255 for 8-bit integer
    arrays), else the largest value in any split (at least 1)."""
    if data.max_level is not None:
        return int(data.max_level)
    high = max(part.max().item() for name in data.splits for part in split_chunks(data.scored(name, seed=0)))
    return max(1, int(math.ceil(high)))


def load_data(spec, seed: int, likelihood=None, device="cpu", preprocessing: Optional[Preprocessing] = None,
              coding: Optional[CovariateCoding] = None) -> Dataset:
    """Read, prepare, check against ``likelihood`` (when given) and move to ``device``.
    ``likelihood`` is a Likelihood (then the data are checked against its support) or a
    Likelihood class (which only decides ``normalize = "auto"``); ``preprocessing`` a
    trained run's (see :func:`prepare`)."""
    data = prepare(read_source(spec.name, spec.path, spec), spec, seed, likelihood, device, preprocessing, coding)
    if likelihood is not None and not isinstance(likelihood, type):
        check_support(data, likelihood)
    return data.to(device)


def labelled_rows(labels: Optional[torch.Tensor], count: int, seed: int, source: str) -> torch.Tensor:
    """The training rows whose labels a semi-supervised run keeps (``data.labelled``):
    ``count`` rows balanced over the classes (count // classes each, one more for
    count % classes classes chosen at random), drawn with ``seed``; sorted."""
    if labels is None:
        raise DataError(f"{source}: data.labelled = {count} needs labels, and this data has none; give a labels "
                        "array (npz 'train_labels', a CSV data.labels column, an .h5ad obs column) or remove data.labelled")
    labels = labels.cpu()
    if count > len(labels):
        raise DataError(f"{source}: data.labelled = {count} is more than the {len(labels)} training examples; "
                        f"use at most {len(labels)}")
    generator = torch.Generator().manual_seed(seed * 7919 + 17)
    classes = torch.unique(labels)
    share = torch.full((len(classes),), count // len(classes), dtype=torch.long)
    share[torch.randperm(len(classes), generator=generator)[: count % len(classes)]] += 1
    chosen = []
    for value, wanted in zip(classes.tolist(), share.tolist()):
        rows = torch.nonzero(labels == value).flatten()
        if wanted > len(rows):
            raise DataError(f"{source}: data.labelled = {count} asks for {wanted} examples of class {value}, which has "
                            f"{len(rows)} in the training split; use at most {len(rows) * len(classes)} labels")
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:wanted]])
    return torch.cat(chosen).sort().values
