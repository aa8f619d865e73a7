"""The run directory: everything a training run leaves, written atomically.

::

    RUN/spec.toml        the fully resolved spec (pyro-vae train --spec RUN/spec.toml repeats it)
    RUN/metrics.csv      one row per epoch
    RUN/summary.json     best validation ELBO and epoch, timings, device, versions, status
    RUN/checkpoint.pt    weights and plain tensors only: the trained weights, and the state
                         that --resume needs (optimizer, RNGs, counters, metrics so far)
    RUN/figures/         elbo.png, reconstructions.png, samples.png

Every file is written to a temporary name in the same folder and renamed over the old
one, so a crash or a full disk never leaves a half-written file. Checkpoints load with
``torch.load(..., weights_only=True)``: a file holding anything but tensors and plain
containers is refused, never unpickled.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .data import Preprocessing, binarize
from .errors import DataError, RunError, SpecError, UserError
from .files import atomic_write, read_csv
from .infer.encode import encode
from .model import build_vae
from .spec import Spec, read_toml
from .tracking import TRACKING_FILES, TRACKING_FOLDERS

SPEC, METRICS, SUMMARY, CHECKPOINT, FIGURES = "spec.toml", "metrics.csv", "summary.json", "checkpoint.pt", "figures"
METRIC_COLUMNS = [
    "epoch",
    "train_elbo",
    "val_elbo",
    "kl",
    "reconstruction",
    "beta",
    "seconds",
    "examples_per_second",
]
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint's tensors and plain containers; anything else is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing; the run has no checkpoint (was it trained to the end of an epoch?)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"({str(exc).splitlines()[0][:120]}); only load checkpoints written by pyro-vae"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise RunError(
            f"{path}: corrupt or truncated checkpoint ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
            "re-run training or restore the file"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "weights" not in checkpoint:
        raise RunError(f"{path}: not a pyro-vae checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


LOCK = ".lock"
# what a run writes (and --force removes), its tracking's local stores included
RUN_FILES = (SPEC, METRICS, SUMMARY, CHECKPOINT, *TRACKING_FILES)
RUN_FOLDERS = (FIGURES, "evaluation", "analysis", "samples", *TRACKING_FOLDERS)


class RunLock:
    """An exclusive lock on an output folder while a process writes it: ``flock`` on
    ``FOLDER/.lock``, which holds the writer's pid, host and start time. The kernel drops
    the lock when the process dies however it dies, so a lock file whose lock is free is
    stale and is taken over; a live writer's is refused. (``flock`` is per machine: on a
    network file system shared by several machines it may not exclude a writer elsewhere.)"""

    def __init__(self, folder: Path, log: Callable[[str], None] | None = None):
        import fcntl
        import socket
        import time

        self.path = Path(folder) / LOCK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            raise RunError(
                f"{folder}: being written by {holder or 'another process'}; wait for it to finish or stop it "
                "({force} does not override this), or choose another {out}"
            ) from None
        stale = self._holder()
        if stale and log is not None:
            log(f"{folder}: taking over the lock of {stale}, which is no longer running")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)

    def _holder(self) -> str:
        return os.pread(self._fd, 200, 0).decode(errors="replace").strip()

    def release(self) -> None:
        """Empty the lock file (an empty one is no one's) and drop the lock. The file stays:
        removing it could let two processes lock two different files of the same name."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_output_dir(path: Path, *, force: bool, log: Callable[[str], None] | None = None,
                     files: tuple = RUN_FILES, folders: tuple = RUN_FOLDERS, patterns: tuple = (),
                     resumable: bool = True) -> RunLock:
    """Lock the output folder ``path`` and make it ready: refused while another process
    writes it, refused when it already holds files unless ``force``, in which case what an
    earlier run wrote (``files``, ``folders``, glob ``patterns``) is removed, nothing else.
    Returns the lock, held until released."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{{out}} {path}: exists and is not a folder; choose another path")
    created = not (path / LOCK).exists()
    lock = RunLock(path, log)  # first: a live writer is refused even with --force
    try:
        if any(p.name != LOCK for p in path.iterdir()):
            if not force:
                if created:  # leave the folder as it was found
                    (path / LOCK).unlink(missing_ok=True)
                resume = f", or {{resume}} {path} to continue that run" if resumable else ""
                raise RunError(f"{{out}} {path}: already holds files; pass {{force}} to replace them{resume}, "
                               "or choose another {out}")
            _clear(path, files, folders, patterns)
    except BaseException:
        lock.release()
        raise
    return lock


def remove_partial_writes(path: Path) -> None:
    """Delete the temporary files a killed process can leave beside the files it was writing."""
    for tmp in Path(path).glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)


def _clear(path: Path, files: tuple, folders: tuple, patterns: tuple) -> None:
    """Remove what an earlier run wrote (its known files and folders), nothing else."""
    import shutil

    remove_partial_writes(path)
    for name in files:
        (path / name).unlink(missing_ok=True)
    for pattern in patterns:
        for match in path.glob(pattern):
            match.unlink(missing_ok=True)
    for name in folders:
        if (path / name).is_dir():
            shutil.rmtree(path / name)


def read_spec(run: Path) -> Spec:
    path = Path(run) / SPEC
    if not path.is_file():
        raise RunError(f"{path}: missing; {run} is not a complete run directory")
    try:
        return Spec.from_dict(read_toml(path))
    except SpecError as exc:
        raise RunError(f"{path}: {exc}") from None


@dataclass
class Run:
    """A trained run, rebuilt from its directory alone."""

    path: Path
    spec: Spec
    vae: Any
    checkpoint: dict

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.checkpoint["data_shape"])

    @property
    def summary(self) -> dict:
        try:
            return json.loads((self.path / SUMMARY).read_text())
        except (OSError, ValueError):
            return {}

    @property
    def metrics(self) -> list[dict[str, float]]:
        return read_csv(self.path / METRICS)

    @property
    def units(self) -> str:
        """The units of this run's ELBO and log p(x), in words (see Preprocessing.units)."""
        return (self.preprocessing or Preprocessing()).units(self.vae.data_shape, self.vae.likelihood.density)

    @property
    def preprocessing(self):
        """The map from stored values to what the model saw in training (normalization,
        standardization), kept in the checkpoint; None for a run from before it was kept."""
        state = self.checkpoint.get("preprocessing")
        return None if state is None else Preprocessing.from_state(state)

    def prepare(self, x, seed: Optional[int] = None) -> torch.Tensor:
        """New data (a numpy array or tensor of stored values, e.g. 8-bit levels or raw
        counts; one example or a batch) as this run's model sees them: on its device,
        float32, in its data shape, normalized and standardized as in training, binarized
        (seed: the run's) where training binarized. Values outside what the model can score,
        or far outside the training data's range (un-normalized input), are refused."""
        vae, p = self.vae, self.preprocessing or Preprocessing()
        device = next(iter(vae.parameters())).device
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            if x.dtype.kind not in "biuf":
                raise DataError(f"prepare: an array of dtype {x.dtype} does not hold numbers; give a numeric array")
        x = torch.as_tensor(x).to(device)
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        if x.is_complex():
            raise DataError(f"prepare: values of dtype {x.dtype} are not real numbers")
        size = math.prod(vae.data_shape)
        if x.numel() % size or (x.ndim and x.shape[-1] != vae.data_shape[-1] and x.shape[-1] != size):
            raise DataError(f"prepare: an array of shape {tuple(x.shape)} does not hold examples of shape "
                            f"{vae.data_shape}; give (n, {', '.join(map(str, vae.data_shape))}) or (n, {size})")
        x = p.apply(x.reshape(-1, *vae.data_shape))
        if not torch.isfinite(x).all():  # before binarizing, which would hide them
            raise DataError("prepare: the data contain NaN or infinite values; clean them first")
        if p.low is not None and len(x):
            span = max(p.high - p.low, 1e-12)
            low, high = x.min().item(), x.max().item()
            if low < p.low - span or high > p.high + span:
                raise DataError(
                    f"prepare: the data span {low:g}..{high:g} once prepared, far outside the training data's "
                    f"{p.low:g}..{p.high:g}; give values as the training file stored them (the run divides by "
                    f"{p.divide or 1:g} itself), not rescaled or raw from another source"
                )
        if self.spec.data.binarize != "none":
            seed = self.spec.inference.schedule.seed if seed is None else seed
            x = binarize(x, seed, "test", torch.arange(len(x)))
        problem = vae.likelihood.check(x, "prepare: the data")
        if problem:
            raise DataError(problem)
        return x

    def encode(self, x, samples: int = 0, seed: int = 0) -> dict:
        """Latent codes of new data (stored values, see :meth:`prepare`): ``mean`` and
        ``std`` per example, ``samples`` (n, S, latent) when S > 0, numpy arrays."""
        return encode(self.vae, self.prepare(x), samples, seed=seed)


def load_weights(vae, weights: dict) -> None:
    """A checkpoint's weights into ``vae``; RuntimeError (one line) when they do not fit. A
    run from before count likelihoods kept their training mean library size lacks it: the
    default (1) stands."""
    try:
        missing, unexpected = vae.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise RuntimeError(" ".join(str(exc).split())[:200]) from None
    missing = [k for k in missing if not k.endswith("likelihood.mean_library")]
    if missing or unexpected:
        raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Rebuild the trained VAE of a run directory (its best weights when early stopping
    was on, else its last), on ``device``, in evaluation mode."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    spec = read_spec(path)
    checkpoint = load_checkpoint(path / CHECKPOINT)
    try:
        vae = build_vae(spec.model, tuple(checkpoint["data_shape"]), int(checkpoint["num_data"]))
        load_weights(vae, checkpoint["weights"])
        preprocessing = Preprocessing.from_state(checkpoint.get("preprocessing"))
        vae.likelihood.use_data_units(preprocessing.log_jacobian(vae.data_shape))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise RunError(f"{path / CHECKPOINT}: does not match {path / SPEC} ({str(exc).splitlines()[0][:160]})") from None
    except UserError:
        raise
    return Run(path, spec, vae.to(device).eval(), checkpoint)
