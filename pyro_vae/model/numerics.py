"""Small numerical helpers shared by the catalogue's parts."""

from __future__ import annotations

import math

import torch


def softplus_inverse(y):
    """x with softplus(x) = y > 0, computed stably: log(expm1(y)) = y + log(-expm1(-y));
    y a float or a tensor."""
    if isinstance(y, torch.Tensor):
        if not (y > 0).all():
            raise ValueError("softplus takes only positive values")
        return y + torch.log(-torch.expm1(-y))
    if y <= 0:
        raise ValueError(f"softplus takes only positive values, got {y}")
    return y + math.log(-math.expm1(-y))
