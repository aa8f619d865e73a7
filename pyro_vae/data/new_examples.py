"""New examples (one or a batch, of stored values: 8-bit levels, raw counts, ...) prepared
as a run's training data were, so that its model can score or encode them."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..errors import DataError
from .dataset import Preprocessing, binarize


def prepare_examples(x, data_shape: tuple[int, ...], likelihood, preprocessing: Optional[Preprocessing] = None,
                     binarize_seed: Optional[int] = None, device="cpu") -> torch.Tensor:
    """``x`` (a numpy array or tensor) on ``device``, float32, in ``data_shape``, normalized
    and standardized by ``preprocessing`` (none: as stored), binarized with
    ``binarize_seed`` where given (training binarized). Values outside what ``likelihood``
    can score, or far outside the training data's range (un-normalized input), are refused."""
    p = preprocessing or Preprocessing()
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise DataError(f"prepare: an array of dtype {x.dtype} does not hold numbers; give a numeric array")
    x = torch.as_tensor(x).to(device)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_complex():
        raise DataError(f"prepare: values of dtype {x.dtype} are not real numbers")
    size = math.prod(data_shape)
    if x.numel() % size or (x.ndim and x.shape[-1] != data_shape[-1] and x.shape[-1] != size):
        raise DataError(f"prepare: an array of shape {tuple(x.shape)} does not hold examples of shape "
                        f"{data_shape}; give (n, {', '.join(map(str, data_shape))}) or (n, {size})")
    x = p.apply(x.reshape(-1, *data_shape))
    if not torch.isfinite(x).all():  # before binarizing, which would hide them
        raise DataError("prepare: the data contain NaN or infinite values; clean them first")
    _check_range(x, p)
    if binarize_seed is not None:
        x = binarize(x, binarize_seed, "test", torch.arange(len(x)))
    problem = likelihood.check(x, "prepare: the data")
    if problem:
        raise DataError(problem)
    return x


def _check_range(x: torch.Tensor, p: Preprocessing) -> None:
    """Refused: prepared values more than the training range's width beyond it."""
    if p.low is not None and len(x):
        span = max(p.high - p.low, 1e-12)
        low, high = x.min().item(), x.max().item()
        if low < p.low - span or high > p.high + span:
            raise DataError(
                f"prepare: the data span {low:g}..{high:g} once prepared, far outside the training data's "
                f"{p.low:g}..{p.high:g}; give values as the training file stored them (the run divides by "
                f"{p.divide or 1:g} itself), not rescaled or raw from another source"
            )
