"""Small numerical helpers shared by the catalogue's parts."""

from __future__ import annotations

import math


def softplus_inverse(y: float) -> float:
    """x with softplus(x) = y > 0, computed stably: log(expm1(y)) = y + log(-expm1(-y))."""
    if y <= 0:
        raise ValueError(f"softplus takes only positive values, got {y}")
    return y + math.log(-math.expm1(-y))
