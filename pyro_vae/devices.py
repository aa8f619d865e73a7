"""The torch device a spec or a command names, checked against this machine; the CPU's
handling of denormal floats while the library computes."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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


def flushes_denormals() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats (|v| < 2^-126, about
    1.2e-38 in float32) to zero: 1e-39 * 1 reads 0."""
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal floats flushed to zero on the CPU for the duration (``torch.set_flush_denormal``:
    x86's FTZ and DAZ flags), the thread's previous mode restored after.

    Why: a trained network produces denormals, which x86 computes through slow microcode
    assists. A Bernoulli decoder confident about MNIST's background gives logits below -87,
    so sigmoid(logit), the gradient of log p(x|z), is below 2^-126, and every product that
    reads it slows down. M2 (``m2_mnist``) after 84 epochs took 130 ms a step, against 58 ms
    with denormals flushed, the pace of a step without denormals (one thread, the 2-core VM,
    2026-12-07; ``benchmarks/denormals.py --weights``). Flushing changes no value above
    1.2e-38 in magnitude, and the library reads probabilities through logits and
    log-sum-exp, where such terms vanish beside the largest anyway; a statistic that tells
    zeros from tiny values counts differently: the gradient SNR (``infer/gradients.py``)
    averages over the coordinates whose gradient varies, and a dead unit's denormal gradients
    no longer do.

    The flags are per thread, and torch's intra-op threads copy them from the thread that
    starts them: entered before torch's first parallel operation (as ``pyro-vae`` does),
    every thread flushes; entered later, this thread does. On exit only this thread's mode
    is restored: threads torch started inside keep flushing for the life of the process
    (Python cannot reach them), which a ``pyro-vae`` process does not outlive. Does nothing
    on a CPU that lacks the flags (``set_flush_denormal`` returns False)."""
    before = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
