"""Moments of a training split, taken once in float64 over chunks of rows.

Standardization (``data.standardize``) divides by them, and likelihoods start their
parameters from them (``Likelihood.initialize_from_data``: a Gaussian's learned scale, a
count likelihood's mean library size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from torch import Tensor


@dataclass(frozen=True)
class DataStatistics:
    """The per-feature ``mean`` and ``sd`` (data_shape, float64), ``pooled_sd`` (the root
    mean of the features' variances), ``mean_total`` (the mean of each example's total: its
    library size) and the range ``low``..``high`` of the values."""

    mean: Tensor
    sd: Tensor
    pooled_sd: float
    mean_total: float
    low: float
    high: float

    @classmethod
    def of(cls, chunks: Iterable[Tensor]) -> "DataStatistics":
        """From an iterable of (rows, *data_shape) tensors."""
        count, total, squares, row_totals, low, high = 0, 0.0, 0.0, 0.0, math.inf, -math.inf
        for x in chunks:
            x = x.double().cpu()
            count += len(x)
            low, high = min(low, x.min().item()), max(high, x.max().item())
            total, squares = total + x.sum(0), squares + (x * x).sum(0)
            row_totals += x.reshape(len(x), -1).sum(1).sum().item()
        mean = total / count
        variance = (squares / count - mean * mean).clamp(min=0)
        return cls(mean, variance.sqrt(), variance.mean().sqrt().item(), row_totals / count, low, high)

    def pooled(self) -> tuple[Tensor, Tensor]:
        """(mean, variance) of all values together: every feature counts as many values."""
        mean = self.mean.mean()
        return mean, (self.sd.square() + self.mean.square()).mean() - mean.square()
