"""The values a likelihood supports (its :class:`Domain`), and the fix to suggest for data
outside them, chosen from what the data actually hold (:class:`Values`): the data are
checked against their likelihood's domain before training (``data.check_support``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Domain:
    """The values a likelihood supports, and the fix to suggest for data outside them,
    chosen from what the data actually hold (see :class:`Values`)."""

    description: str
    contains: Callable[[Tensor], Tensor]
    fix: Callable[["Values"], str] = lambda values: ""
    bounds: tuple[float | None, float | None] = (None, None)  # (lowest, highest) value, None where unbounded


def _is_integer(x: Tensor) -> Tensor:
    return x == torch.round(x)


@dataclass(frozen=True)
class Values:
    """What data hold, as far as choosing a likelihood goes."""

    low: float
    high: float
    integers: bool  # every value a whole number

    @classmethod
    def of(cls, x: Tensor) -> "Values":
        return cls(x.min().item(), x.max().item(), bool(_is_integer(x).all()))


REAL_KINDS = "a likelihood for real values (gaussian, laplace, student_t; the shipped model gaussian_per_feature has one)"
COUNT_KINDS = "a likelihood for counts (poisson, negative_binomial, zinb)"


def _fix_unit(v: Values) -> str:
    if v.integers and v.low >= 0 and v.high <= 255:
        return (f"the data are whole numbers 0..{v.high:g}: rescale them into [0, 1], or store them as an integer "
                f"array and set data.normalize = true (it divides 8-bit levels by 255), or choose {COUNT_KINDS}")
    if v.integers and v.low >= 0:
        return f"the data are whole numbers 0..{v.high:g}, counts: choose {COUNT_KINDS}, or rescale them into [0, 1]"
    if v.low < 0:
        return f"the data are real values, negative ones included: choose {REAL_KINDS}, or rescale them into [0, 1]"
    return f"the data are real values above 1: choose {REAL_KINDS}, or rescale them into [0, 1]"


def _fix_open_unit(v: Values) -> str:
    if 0 <= v.low and v.high <= 1:
        return "the data touch 0 or 1: use continuous_bernoulli, or squeeze the data into (0, 1)"
    return f"choose {REAL_KINDS} for data outside [0, 1], or rescale them into (0, 1)"


def _fix_levels(levels: int, v: Values) -> str:
    if not v.integers and 0 <= v.low and v.high <= 1:
        return "the data look divided into [0, 1]: set data.normalize = false to keep the integer levels"
    if v.integers and v.low >= 0:
        return (f"whole numbers beyond 0..{levels}: leave model.likelihood.levels unset (it is taken from the training "
                f"data), or choose {COUNT_KINDS}")
    if v.integers:
        return f"levels are never negative: choose {REAL_KINDS}"
    return f"the data are not whole levels: choose {REAL_KINDS}, or continuous_bernoulli for data in [0, 1]"


def levels_domain(levels: int) -> Domain:
    """Integer levels 0..``levels``."""
    return Domain(f"integer levels 0..{levels}", lambda x: (x >= 0) & (x <= levels) & _is_integer(x),
                  partial(_fix_levels, levels), (0.0, float(levels)))


def _fix_counts(v: Values) -> str:
    if v.low < 0:
        return f"counts are never negative: choose {REAL_KINDS}"
    if v.high <= 1:
        return ("the data are fractions in [0, 1], not whole counts: if the file stores counts, set data.normalize = "
                "false (or auto) so they are not divided; for data in [0, 1] choose bernoulli or continuous_bernoulli")
    return f"the data are non-negative but not whole numbers: round them if they are counts, or choose {REAL_KINDS}"


UNIT = Domain("values in [0, 1]", lambda x: (x >= 0) & (x <= 1), _fix_unit, (0.0, 1.0))
OPEN_UNIT = Domain("values strictly inside (0, 1)", lambda x: (x > 0) & (x < 1), _fix_open_unit, (0.0, 1.0))
REAL = Domain("finite real values", lambda x: torch.ones_like(x, dtype=torch.bool))
COUNTS = Domain("non-negative integer counts", lambda x: (x >= 0) & _is_integer(x), _fix_counts, (0.0, None))
