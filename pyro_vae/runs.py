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

import errno
import hashlib
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .data import Preprocessing
from .data.new_examples import prepare_examples
from .data.covariates import CovariateCoding, with_values
from .errors import DataError, RunError, SpecError, UserError
from .files import atomic_path, atomic_write, read_csv
from .infer.encode import encode
from .model import build_vae
from .registry import check_code_trusted, trusting_code
from .spec import Spec, read_toml
from .tracking import TRACKING_FOLDERS

SPEC, METRICS, SUMMARY, CHECKPOINT, FIGURES = "spec.toml", "metrics.csv", "summary.json", "checkpoint.pt", "figures"
METRIC_COLUMNS = [
    "epoch",
    "train_elbo",
    "val_elbo",
    "kl",
    "reconstruction",
    "beta",
    "lr",
    "seconds",
    "examples_per_second",
]
CHECKPOINT_FORMAT = 2
"""The layout of checkpoint.pt, written into every checkpoint as ``"format"``. A checkpoint
of an older format is rewritten into the current layout in memory when it is read (its
function in MIGRATIONS, one per older format, applied in turn); a newer one is refused.

2 (since 2026-12-07): ``preprocessing`` and ``training.world_size`` always present, and the
  weights hold every parameter and buffer of the model, but for those a migrated file
  ``lacks`` (a list of names, in memory only), which keep the model's initial values.
1 (until 2026-12-07): as 2, except that files written before 2026-11-22 lack
  ``preprocessing``, ``training.world_size`` and a count likelihood's ``mean_library``."""


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write the checkpoint atomically and record its SHA-256 in the run's manifest (when the
    folder has one): first beside the previous one's, then alone once the file is in place,
    so that a kill at any point leaves the checkpoint on disk among the hashes recorded."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            try:
                torch.save({k: v for k, v in checkpoint.items() if k != "lacks"}, f)  # in memory only
            except RuntimeError as exc:  # torch's writer reports a full disk or a file size limit this way
                raise OSError(errno.EIO, f"writing failed: {_first_line(exc)}; is the disk full, or a file size limit "
                                         "(ulimit -f) set?") from None
        digest = sha256_file(tmp)
        record_outputs(path.parent, [path], checkpoint_sha256=digest, keep_previous=True)
    record_outputs(path.parent, [], checkpoint_sha256=digest)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint's tensors and plain containers; anything else is refused, not run. A
    checkpoint whose SHA-256 is not the one its run's manifest recorded is refused too."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing; the run has no checkpoint (was it trained to the end of an epoch?)")
    recorded = (read_manifest(path.parent) or {}).get("checkpoint_sha256")
    if recorded and sha256_file(path) not in recorded:
        raise RunError(f"{path}: corrupt: its SHA-256 is not the one recorded when it was written "
                       f"({MANIFEST}); restore the file or re-run training")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"({str(exc).splitlines()[0][:120]}); only load checkpoints written by pyro-vae"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise RunError(
            f"{path}: corrupt or truncated checkpoint ({_first_line(exc)}); re-run training or restore the file"
        ) from None
    version = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if type(version) is not int or version < 1 or not isinstance(checkpoint.get("weights"), dict):
        raise RunError(f"{path}: not a pyro-vae checkpoint (its format is not one of 1 to {CHECKPOINT_FORMAT})")
    checkpoint.pop("lacks", None)  # only a migration says what an older format lacked; never the file
    if version > CHECKPOINT_FORMAT:
        raise RunError(f"{path}: checkpoint format {version}, newer than this pyro-vae reads (format "
                       f"{CHECKPOINT_FORMAT} and older); upgrade pyro-vae (pip install --upgrade pyro-vae) to load it")
    for old in range(version, CHECKPOINT_FORMAT):
        checkpoint = MIGRATIONS[old](checkpoint)
    return checkpoint


def _from_format_1(checkpoint: dict) -> dict:
    """Format 1 as format 2. A file written before 2026-11-22 lacks ``preprocessing`` (its
    data were prepared as its spec says: None), ``training.world_size`` (one process) and
    a count likelihood's ``mean_library`` (the model's initial value, 1, stands: only a
    library-size model reads it, and those kept it); ``lacks`` names those weights."""
    checkpoint.setdefault("preprocessing", None)
    if isinstance(checkpoint.get("training"), dict):
        checkpoint["training"].setdefault("world_size", 1)
    checkpoint["lacks"] = ["likelihood.mean_library"]
    checkpoint["format"] = 2
    return checkpoint


MIGRATIONS = {1: _from_format_1}  # format -> its checkpoint rewritten in the next format


# --- the manifest: what marks a folder as a run (or a comparison), and what it wrote ---------

MANIFEST = "manifest.json"


def read_manifest(folder: Path, kind: Optional[str] = None) -> Optional[dict]:
    """``FOLDER/manifest.json`` when it marks a pyro-vae run or comparison (of ``kind``,
    when given): ``{"pyro_vae": kind, "files": [relative paths], ...}``; else None."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("pyro_vae") not in ("run", "comparison") \
            or not isinstance(manifest.get("files"), list) or not all(isinstance(f, str) for f in manifest["files"]):
        return None
    if kind is not None and manifest["pyro_vae"] != kind:
        return None
    return manifest


def mark(folder: Path, kind: str) -> None:
    """Mark ``folder`` as a pyro-vae ``kind`` (run or comparison) that has written nothing yet."""
    atomic_write(Path(folder) / MANIFEST, lambda f: f.write(json.dumps({"pyro_vae": kind, "files": []}).encode()))


def record_outputs(folder: Path, files, checkpoint_sha256: Optional[str] = None, keep_previous: bool = False,
                   runs=()) -> None:
    """Add ``files`` (paths of files inside ``folder``, as ``folder / name``) to its manifest, and, for a run, the SHA-256 of
    its checkpoint (``keep_previous``: beside the previous one). A folder without a manifest
    (not a run pyro-vae marked) is left as it is."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return
    root = folder.resolve()
    names = {Path(f).resolve().relative_to(root).as_posix() for f in files if Path(f).resolve().is_relative_to(root)}
    manifest["files"] = sorted(set(manifest["files"]) | names)
    if runs:
        manifest["runs"] = sorted(set(manifest.get("runs", [])) | {str(r) for r in runs})
    if checkpoint_sha256 is not None:
        previous = manifest.get("checkpoint_sha256", []) if keep_previous else []
        manifest["checkpoint_sha256"] = list(dict.fromkeys([checkpoint_sha256, *previous]))
    atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


LOCK = ".lock"
# the folders pyro-vae writes in, inside a run (and a comparison's "runs")
OWN_FOLDERS = (FIGURES, "evaluation", "analysis", "samples", "runs", *TRACKING_FOLDERS)


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
                "($force does not override this), or choose another $out"
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


def claim_output_dir(path: Path, *, force: bool, log: Callable[[str], None] | None = None, kind: str = "run",
                     resumable: bool = True) -> RunLock:
    """Lock the output folder ``path`` and make it ready: refused while another process
    writes it, refused when it already holds files unless ``force``. ``force`` acts only on a
    folder that pyro-vae marked as a ``kind`` (run or comparison; see :func:`read_manifest`),
    and removes only the files its manifest lists (a comparison's runs by their own); any
    other file is kept and named. The folder is then marked anew. Returns the lock, held
    until released."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RunError(f"$out {path}: a symbolic link to {os.readlink(path)}, which does not exist; choose another path")
    if path.exists() and not path.is_dir():
        raise RunError(f"$out {path}: exists and is not a folder; choose another path")
    created = not (path / LOCK).exists()
    try:
        lock = RunLock(path, log)  # first: a live writer is refused even with --force
    except OSError as exc:
        raise RunError(f"$out {path}: cannot be written ({exc.strerror or exc}); choose a writable folder") from None
    try:
        if any(p.name != LOCK for p in path.iterdir()):
            if not force:
                resume = f", or $resume {path} to continue that run" if resumable else ""
                raise RunError(f"$out {path}: already holds files; pass $force to replace them{resume}, "
                               "or choose another $out")
            kept = _clear(path, kind)
            if kept and log is not None:
                shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
                log(f"{path}: kept {len(kept)} file(s) that pyro-vae did not write there: {shown}")
        mark(path, kind)
    except BaseException as exc:
        lock.release()
        if created:  # refused: leave the folder as it was found
            (path / LOCK).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunError(f"$out {path}: cannot be written ({exc.strerror or exc}); choose a writable folder") from None
        raise
    return lock


def remove_partial_writes(path: Path) -> None:
    """Delete the temporary files a killed process can leave beside the files it was writing."""
    for tmp in Path(path).glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)


def _clear(path: Path, kind: str) -> list[str]:
    """Remove what pyro-vae wrote in ``path`` (the files its manifest lists; a comparison's
    runs by their own manifests), nothing else; returns what is left (relative paths).
    Refused, with nothing removed, unless the folder is marked as a ``kind`` and every
    folder pyro-vae writes in is a real folder inside it."""
    manifest = read_manifest(path)
    if manifest is None or manifest["pyro_vae"] != kind:
        what = "not a pyro-vae " + kind if manifest is None else f"a pyro-vae {manifest['pyro_vae']}, not a {kind}"
        raise RunError(f"$out {path}: $force replaces only a {kind} pyro-vae wrote (marked by its {MANIFEST}), and "
                       f"this folder is {what}; nothing was deleted: choose another $out, or empty it yourself")
    runs = [path / r for r in manifest.get("runs", []) if _inside(path / r, path)]
    for folder in (path, *runs):
        for name in OWN_FOLDERS:
            if (folder / name).is_symlink() or ((folder / name).exists() and not (folder / name).is_dir()):
                raise RunError(f"$out {path}: {folder / name} is a symbolic link or a file where pyro-vae writes a "
                               "folder; nothing was deleted: remove it yourself, or choose another $out")
    for run in runs:  # each of a comparison's runs by its own manifest, and gone when nothing else is left in it
        if read_manifest(run, "run") is not None and not _clear(run, "run"):
            for name in (LOCK, MANIFEST):
                (run / name).unlink(missing_ok=True)
            run.rmdir()
    remove_partial_writes(path)
    for name in manifest["files"]:
        target = path / name
        if _inside(target, path) and (target.is_file() or target.is_symlink()):
            target.unlink()
    left = []
    for folder, folders, files in os.walk(path, topdown=False):  # never into a linked folder
        folder = Path(folder)
        left += [(folder / name).relative_to(path).as_posix() for name in files + folders
                 if (folder / name).is_symlink() or (folder / name).is_file()]
        if folder != path and not any(folder.iterdir()):  # folders left empty
            folder.rmdir()
    return sorted(name for name in left if name not in (LOCK, MANIFEST))


def _inside(target: Path, folder: Path) -> bool:
    """Whether ``target`` lies inside ``folder`` with no link on the way (``..`` or a symlinked folder)."""
    try:
        relative = Path(target).relative_to(folder)
    except ValueError:
        return False
    return ".." not in relative.parts and Path(target).parent.resolve() == (Path(folder).resolve() / relative).parent


def read_spec(run: Path) -> Spec:
    """RUN/spec.toml, validated. A kind importing a module from outside the library is
    refused unless the caller trusts code (``trust_code``), and one whose module lies inside
    the run directory always: a run directory may come from someone else."""
    path = Path(run) / SPEC
    if not path.is_file():
        raise RunError(f"{path}: missing; {run} is not a complete run directory")
    try:
        raw = read_toml(path)
        check_code_trusted(raw, str(path), run_dir=Path(run))
        return Spec.from_dict(raw)
    except SpecError as exc:
        message = exc.template
        raise RunError(message if message.startswith(str(path)) else f"{path}: {message}") from None


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
        """summary.json ({} when it is missing, unreadable or not a table)."""
        try:
            summary = json.loads((self.path / SUMMARY).read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        return summary if isinstance(summary, dict) else {}

    @property
    def metrics(self) -> list[dict[str, float]]:
        """metrics.csv's rows; refused when it lacks the epoch and ELBO columns or any row."""
        rows = read_csv(self.path / METRICS)
        missing = [c for c in ("epoch", "train_elbo", "val_elbo") if not rows or c not in rows[0]]
        if missing:
            raise RunError(f"{self.path / METRICS}: " + (f"no column {missing[0]!r}" if rows else "no rows")
                           + "; the file is not one pyro-vae wrote: restore it")
        return rows

    @property
    def units(self) -> str:
        """The units of this run's ELBO and log p(x), in words (see Preprocessing.units)."""
        preprocessing = replace(self.preprocessing or Preprocessing(), binarized=self.spec.data.binarize != "none")
        return preprocessing.units(self.vae.data_shape, self.vae.likelihood.density)

    @property
    def preprocessing(self):
        """The map from stored values to what the model saw in training (normalization,
        standardization), kept in the checkpoint; None for a run from before it was kept
        (format 1), whose data are prepared as its spec says."""
        state = self.checkpoint["preprocessing"]
        return None if state is None else Preprocessing.from_state(state)

    @property
    def coding(self) -> CovariateCoding:
        """How the covariates the model conditions on were coded in training (none: empty)."""
        return CovariateCoding.from_state(self.checkpoint.get("covariates"))

    def condition(self, covariates, n: int, where: str = "condition") -> Optional[torch.Tensor]:
        """c (n, K) on the run's device from ``covariates``: {name: one value, or one per
        example} in the values the data hold (``batch = "b1"``, ``label = 7``), coded as in
        training; None for a model without covariates (where ``covariates`` must be empty)."""
        coding = self.coding
        if not coding:
            if covariates:
                raise DataError(f"{where}: this run's model has no covariates; leave out the condition")
            return None
        values = {}
        for name in coding.names:
            if name not in (covariates or {}):
                raise DataError(f"{where}: no value for the covariate {name!r}; give every covariate the model reads "
                                f"({', '.join(coding.names)})")
            value = np.asarray(covariates[name])
            values[name] = np.repeat(value.reshape(1), n) if value.ndim == 0 else value
            if len(values[name]) != n:
                raise DataError(f"{where}: covariate {name!r} has {len(values[name])} values for {n} examples; give "
                                "one value, or one per example")
        unknown = sorted(set(covariates or {}) - set(coding.names))
        if unknown:
            raise DataError(f"{where}: no covariate {unknown[0]!r} in this run (its covariates: {', '.join(coding.names)})")
        device = next(iter(self.vae.parameters())).device
        return coding.encode(values, where).to(device)

    @torch.no_grad()
    def decode(self, z, condition=None) -> torch.Tensor:
        """E[x | z] (with covariates, E[x | z, c]) for latent codes z (n, latent), on the model's
        scale; ``condition``: {name: value or values} (see :meth:`condition`)."""
        device = next(iter(self.vae.parameters())).device
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device).reshape(-1, self.vae.latent_dim)
        c = self.condition(condition, len(z), "decode")
        return self.vae.decode_mean(z, condition=c) if c is not None else self.vae.decode_mean(z)

    def prepare(self, x, seed: Optional[int] = None) -> torch.Tensor:
        """New data (a numpy array or tensor of stored values, e.g. 8-bit levels or raw
        counts; one example or a batch) as this run's model sees them: on its device,
        float32, in its data shape, normalized and standardized as in training, binarized
        (seed: the run's) where training binarized. Values outside what the model can score,
        or far outside the training data's range (un-normalized input), are refused
        (:func:`~pyro_vae.data.new_examples.prepare_examples`)."""
        vae = self.vae
        binarize_seed = None
        if self.spec.data.binarize != "none":
            binarize_seed = self.spec.inference.schedule.seed if seed is None else seed
        return prepare_examples(x, vae.data_shape, vae.likelihood, self.preprocessing, binarize_seed,
                                next(iter(vae.parameters())).device)

    def encode(self, x, samples: int = 0, seed: int = 0, covariates=None, transform=None) -> dict:
        """Latent codes of new data (stored values, see :meth:`prepare`): ``mean`` and
        ``std`` per example, ``samples`` (n, S, latent) when S > 0, numpy arrays. A model
        with covariates reads ``covariates`` ({name: value or values}); ``transform``
        ({name: value}) adds ``transformed``, each example's reconstruction E[x | E_q[z], c']
        decoded with its covariates changed to those values (scVI's transform_batch)."""
        x = self.prepare(x)
        c = self.condition(covariates, len(x), "encode")
        changed = None
        if transform:
            if c is None:
                raise DataError("encode: transform changes covariates, and this run's model has none")
            changed = with_values(c, self.coding.assignments(dict(transform), "transform"))
        return encode(self.vae, x, samples, seed=seed, condition=c, transformed=changed)


def with_lacking(weights: dict, vae, checkpoint: dict) -> dict:
    """``weights`` (a checkpoint's ``weights`` or ``training.last_weights``) completed by the
    model's initial values of those an older format lacked (``lacks``, set by MIGRATIONS)."""
    lacks = checkpoint.get("lacks", ())
    if not lacks:
        return weights
    initial = vae.state_dict()
    return {**{k: v for k, v in initial.items() if k not in weights and any(k.endswith(n) for n in lacks)}, **weights}


def load_weights(vae, checkpoint: dict) -> None:
    """A checkpoint's weights into ``vae``; RuntimeError (one line) when they do not fit.
    Weights an older format lacked (``lacks``, see MIGRATIONS) keep the model's initial values."""
    try:
        missing, unexpected = vae.load_state_dict(with_lacking(checkpoint["weights"], vae, checkpoint), strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise RuntimeError(" ".join(str(exc).split())[:200]) from None
    if missing or unexpected:
        raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")


def _check_preprocessing(path: Path, checkpoint: dict) -> None:
    """Refuse a checkpoint whose data shape or preprocessing is not what pyro-vae writes
    (a crafted file): finite numbers, of shapes that fit the data's."""
    try:
        shape = tuple(int(n) for n in checkpoint["data_shape"])
        if not shape or min(shape) < 1 or math.prod(shape) > 2**31 or int(checkpoint["num_data"]) < 1:
            raise ValueError("data_shape or num_data")
        p = Preprocessing.from_state(checkpoint["preprocessing"])
        for value in (p.mean, p.sd):
            if value is not None:
                if not isinstance(value, torch.Tensor) or not torch.isfinite(value).all():
                    raise ValueError("mean or sd")
                torch.broadcast_shapes(value.shape, shape)
        for value in (p.divide, p.low, p.high):
            if value is not None and not math.isfinite(float(value)):
                raise ValueError("divide or range")
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as exc:
        raise RunError(f"{path / CHECKPOINT}: its data description ({_first_line(exc)}) is not one pyro-vae writes; "
                       "the file was altered: restore it or train again") from None


def check_finite(path: Path, checkpoint: dict, fix: str = "train again (a lower learning rate, "
                 "inference.schedule.clip_norm) or restore the file", prefix: str = "") -> None:
    """Refuse weights holding NaN or infinite values, naming the epoch they come from."""
    bad = [name for name, value in checkpoint["weights"].items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if not bad:
        return
    epoch = Run(path, None, None, checkpoint).summary.get("saved_epoch")
    if not isinstance(epoch, int):
        try:
            epoch = int(checkpoint["training"]["state"]["epoch"])
        except (KeyError, TypeError, ValueError):
            epoch = "unknown"
    raise RunError(f"{prefix}{path / CHECKPOINT}: the weights of epoch {epoch} hold NaN or infinite values ({bad[0]}"
                   f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); nothing can be computed from them: {fix}")


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", trust_code: bool = False) -> Run:
    """Rebuild the trained VAE of a run directory (its best weights when early stopping
    was on, else its last), on ``device``, in evaluation mode. ``trust_code``: import the
    modules of the spec's own component classes (``package.module:Name`` kinds)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    with trusting_code(trust_code):
        spec = read_spec(path)
    checkpoint = load_checkpoint(path / CHECKPOINT)
    check_finite(path, checkpoint)
    _check_preprocessing(path, checkpoint)
    try:
        coding = CovariateCoding.from_state(checkpoint.get("covariates"))
        vae = build_vae(spec.model, tuple(checkpoint["data_shape"]), int(checkpoint["num_data"]), coding.layout)
        load_weights(vae, checkpoint)
        preprocessing = Preprocessing.from_state(checkpoint["preprocessing"])
        vae.likelihood.use_data_units(preprocessing.log_jacobian(vae.data_shape))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path / CHECKPOINT}: does not match {path / SPEC} ({str(exc).splitlines()[0][:160]})") from None
    except UserError:
        raise
    return Run(path, spec, vae.to(device).eval(), checkpoint)
