"""The torch device a spec or a command names, checked against this machine."""

from __future__ import annotations

import torch

from . import distributed
from .errors import SpecError


def resolve_device(choice: str, where: str = "inference.schedule.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other torch device string (``cpu``,
    ``cuda``, ``cuda:1``, ``mps``) must name a device this machine has. Under several
    processes ``cuda`` is this rank's GPU, ``cuda:LOCAL_RANK``."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        raise SpecError(f"{where}: {choice!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SpecError(f"{where}: {choice!r} but no CUDA device is available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= count:
            raise SpecError(f"{where}: {choice!r} but this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, NotImplementedError) as exc:
            raise SpecError(f"{where}: {choice!r} is not available here ({str(exc).splitlines()[0][:100]}); "
                            "use 'auto' or 'cpu'") from None
    return distributed.local_device(device)
