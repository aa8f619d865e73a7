"""Train a spec to a run directory, and resume one: the run directory's files (see
:mod:`pyro_vae.runs`) around :class:`~pyro_vae.infer.train.Trainer`, which does the
computation. Only rank 0 writes; every rank trains."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import NamedTuple, Optional

import pyro
import torch

from .. import distributed
from ..analysis.figures import training_figures
from ..data import binarize, check_support, labelled_rows, largest_level, load_data, split_chunks
from ..data.statistics import DataStatistics
from ..devices import resolve_device
from ..errors import DataError, Interrupted, RunError, SpecError, TrainingDiverged
from ..files import atomic_write_json, atomic_write_text, output_folder, write_csv
from ..infer.pretrain import vade_initialize
from ..infer.train import Trainer, say_on_stderr
from ..model import build_vae
from ..model.likelihoods import LIKELIHOODS
from ..provenance import provenance
from .memory import check_training_step
from ..runs import (CHECKPOINT, CHECKPOINT_FORMAT, FIGURES, METRIC_COLUMNS, METRICS, SPEC, SUMMARY, RunLock, claim_output_dir,
                   check_finite, load_checkpoint, load_weights, read_spec, record_outputs, remove_partial_writes, with_lacking,
                   save_checkpoint)
from ..spec import Spec
from ..tracking import TRACKERS, check_stores, target_outside, tracking_outputs


def _versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def prepare_training(spec):
    """Data and VAE for ``spec``, checked against each other, on the spec's device."""
    device = resolve_device(spec.inference.schedule.device)
    distributed.use_device(device, spec.inference.schedule.collective_timeout)
    seed = spec.inference.schedule.seed
    pyro.set_rng_seed(seed)
    data = load_data(spec.data, seed, likelihood=LIKELIHOODS.resolve(spec.model.likelihood["kind"]), device=device)
    train = data.split("train")
    if "valid" not in data.splits:
        raise DataError(f"{data.source}: no validation split; add a 'valid' array or a 'train' array to split from")
    _levels_from_data(spec, data)
    vae = build_vae(spec.model, data.data_shape, num_data=len(train), covariates=data.coding.layout)
    check_training_step(spec, vae, data.data_shape, device)
    check_support(data, vae.likelihood)
    vae.likelihood.use_data_units(data.preprocessing.log_jacobian(data.data_shape))
    statistics = DataStatistics.of(split_chunks(train))
    vae.likelihood.initialize_from_data(statistics)
    data.preprocessing.low, data.preprocessing.high = statistics.low, statistics.high
    vae, data = vae.to(device), data.to(device)
    if data.coding:  # model and guide read each batch's covariates by its rows
        vae.conditioning.observe(data.covariates["train"])
    if spec.data.labelled is not None:
        _supervise(vae, data, spec)
    return vae, data


def _levels_from_data(spec, data) -> None:
    """A likelihood over levels 0..L (binomial, categorical, discretized_logistic) with
    ``levels`` unset takes L from the data (:func:`~pyro_vae.data.largest_level`); the spec
    the run writes records it, so the run is rebuilt and resumed with the same L."""
    table = spec.model.likelihood
    if "levels" in table and table["levels"] is None:
        table["levels"] = largest_level(data)


def _supervise(vae, data, spec) -> None:
    """``data.labelled``: observe y on that many training examples, balanced over the classes."""
    discrete = spec.model.discrete
    if discrete is None:
        raise SpecError("data.labelled keeps labels for a discrete latent y, and this model has none; add a "
                        "[model.discrete] table (e.g. --model m2_semisupervised) or remove data.labelled")
    seed = spec.inference.schedule.seed
    rows = labelled_rows(data.labels.get("train"), spec.data.labelled, seed, data.source)
    labels = data.labels["train"][rows.to(data.labels["train"].device)]
    if int(labels.max()) >= discrete.classes or int(labels.min()) < 0:
        raise SpecError(f"model.discrete.classes = {discrete.classes}, but {data.source}'s labels run "
                        f"{int(labels.min())}..{int(labels.max())}; set classes to the number of classes")
    x = data.split("train")[rows.to(vae.class_logits.device)]
    if data.dynamic:  # the labelled examples are binarized once, as held-out ones are
        x = binarize(x, seed, "train", rows)
    alpha = 0.1 * vae.num_data if discrete.alpha is None else discrete.alpha
    vae.supervise(x, labels, rows, alpha, discrete.labelled_batch)


def saved_weights(trainer: Trainer) -> tuple[int, float, str]:
    """(epoch, validation ELBO, 'best' or 'last') of the weights the checkpoint holds: the
    best epoch's with early stopping on (patience > 0), else the last epoch's."""
    state = trainer.state
    if trainer.keeps_best:
        return state.best_epoch, state.best_val, "the best, kept by early stopping"
    last = state.history[-1] if state.history else {"epoch": 0, "val_elbo": math.nan}
    return last["epoch"], last["val_elbo"], "the last"


def _summary(trainer: Trainer, status: str, message: str = "", provenance: Optional[dict] = None) -> dict:
    state, data = trainer.state, trainer.data
    saved_epoch, saved_elbo, _ = saved_weights(trainer)
    total_examples = trainer.steps_per_epoch * trainer.batch_size * len(state.history)
    seconds = sum(row["seconds"] for row in state.history)
    summary = {
        "status": status,
        "best_val_elbo": state.best_val if math.isfinite(state.best_val) else None,
        "best_epoch": state.best_epoch,
        "saved_epoch": saved_epoch,  # the epoch whose weights checkpoint.pt holds
        "saved_val_elbo": saved_elbo if math.isfinite(saved_elbo) else None,
        "epochs": state.epoch,
        "train_seconds": state.train_seconds,
        "examples_per_second": total_examples / seconds if seconds > 0 else None,
        "device": str(trainer.device),
        "device_name": _device_name(trainer.device),
        "versions": _versions(),
        "num_parameters": sum(p.numel() for p in trainer.vae.parameters()),
        "data": _data_summary(data),
        "units": data.preprocessing.units(data.data_shape, trainer.vae.likelihood.density),
        **(provenance or {}),
    }
    if message:
        summary["message"] = message
    return summary


def _data_summary(data) -> dict:
    summary = {"source": data.source, "shape": list(data.data_shape), "streamed": data.streamed,
               **{k: len(v) for k, v in data.splits.items()}}
    if data.sha256:
        summary["sha256"] = data.sha256
    if data.label_names:
        summary["label_names"] = data.label_names
    if data.drawn:
        summary["drawn_from_train"] = data.drawn
    if data.feature_names:
        summary["feature_names"] = data.feature_names
    if data.coding:
        summary["covariates"] = {c.name: c.categories if c.kind == "categorical" else {"mean": c.mean, "sd": c.sd}
                                 for c in data.coding.covariates}
    return summary


def carved_test_note(data, test_fraction: float) -> Optional[str]:
    """The line that says a test split was carved from the training rows of a source that
    brought its own validation split (so its training rows are the published ones, e.g.
    binarized MNIST's 50,000): training then sees fewer of them. None otherwise."""
    if "test" not in data.drawn or "valid" in data.drawn:
        return None
    test, train = data.drawn["test"], len(data.split("train"))
    return (f"data: {data.source} has a validation split but no test split, so data.test_fraction = {test_fraction:g} "
            f"takes {test:,} of its {test + train:,} training rows as the test split and trains on {train:,}; "
            "set data.test_fraction = 0 to train on all of them")


def tracker_of(spec):
    """The spec's tracker (``[tracking]``), built (its library imported) but not started; or None."""
    return None if spec.tracking is None else TRACKERS.build(spec.tracking)


ENDED = ("completed", "early_stopped")  # the statuses of a run that trained to its end


def _summary_of(path) -> dict:
    """The run's summary.json as last written ({} when absent or unreadable)."""
    try:
        return json.loads((Path(path) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


class _RunWriter:
    """Persists a Trainer's state into its run directory (see runs.py), and sends it to
    the spec's tracker, if any."""

    def __init__(self, path, trainer: Trainer, resumed: bool = False, initialized_from=None, tracker=None,
                 spec=None):
        self.path, self.trainer, self.tracker = path, trainer, tracker
        self.tracked = len(trainer.state.history)  # rows the tracker has (a resumed run's, from start)
        output_folder(Path(path) / FIGURES)  # a planted link is refused before training, not after an epoch
        if tracker is not None:
            check_stores(Path(path))  # a received run's planted links are not followed
            tracker.start(Path(path), spec.to_dict(), spec.to_toml(), resumed, trainer.state.history)
        trainer.save = self
        # the command line and git commits that started the run; each resume adds its own
        self.provenance = provenance()
        if initialized_from is not None:
            self.provenance["initialized_from"] = str(Path(initialized_from).resolve())
        if resumed:
            earlier = _summary_of(path)
            started = {k: earlier[k] for k in ("command", "git", "pyro_vae_git", "initialized_from") if k in earlier}
            self.provenance = {**started, "resumed": [*earlier.get("resumed", []), self.provenance]}

    def __call__(self, checkpoint: dict) -> None:
        trainer = self.trainer
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "data_shape": list(trainer.data.data_shape),
            "num_data": trainer.num_data,
            "preprocessing": trainer.data.preprocessing.state(),
            **({"covariates": trainer.data.coding.state()} if trainer.data.coding else {}),
            **({"data_sha256": trainer.data.sha256} if trainer.data.sha256 else {}),
            **checkpoint,
        }
        save_checkpoint(self.path / CHECKPOINT, checkpoint)
        self.metrics()
        atomic_write_json(self.path / SUMMARY, _summary(trainer, "running", provenance=self.provenance))
        record_outputs(self.path, [self.path / METRICS, self.path / SUMMARY])

    def metrics(self) -> None:
        history = self.trainer.state.history
        write_csv(self.path / METRICS, history, METRIC_COLUMNS)
        if self.tracker is not None and len(history) > self.tracked:
            self.tracker.log_rows(history[self.tracked:])
            self.tracked = len(history)

    def finish(self, status: str, message: str = "") -> None:
        """The figures, then the summary with the final status: a summary that says a run
        ended is the mark that everything of it is written (see ``_resume``)."""
        trainer = self.trainer
        summary = _summary(trainer, status, message, self.provenance)
        figures = None
        if status in ENDED and trainer.state.history:
            data = trainer.data
            condition = (data.covariates["valid"], data.coding.draw(64).to(trainer.device)) if data.coding else None
            training_figures(output_folder(self.path / FIGURES), trainer.vae, data.split("valid"), trainer.state.history,
                             feature_names=data.feature_names, condition=condition)
            figures = self.path / FIGURES
        atomic_write_json(self.path / SUMMARY, summary)
        written = [self.path / SUMMARY, *(sorted(figures.glob("*.png")) if figures else [])]
        record_outputs(self.path, written)
        if self.tracker is not None:
            self.tracker.finish(summary, figures)
            record_outputs(self.path, tracking_outputs(self.path))


def _run(trainer: Trainer, writer: Optional[_RunWriter]):
    try:
        state = trainer.fit()
    except TrainingDiverged as exc:
        if writer:
            writer.finish("diverged", str(exc))
        raise
    except Interrupted as exc:
        if writer:
            writer.finish("interrupted", str(exc))
        raise
    if writer:
        writer.finish("early_stopped" if state.stopped_early else "completed")
    return trainer


def train(spec, out=None, *, force: bool = False, progress: Optional[bool] = None, log=None, on_epoch=None, before=None,
          init=None) -> Trainer:
    """Train ``spec`` (a Spec); with ``out``, write a run directory there (locked while this
    process writes it). Returns the Trainer, whose ``vae`` holds the trained model (its best
    weights when early stopping is on). ``init`` (a run directory) starts from that run's
    weights, with a fresh optimizer. ``before(trainer)`` runs once before the first step,
    ``on_epoch(trainer)`` after each epoch."""

    vae, data = prepare_training(spec)
    if init is not None:
        load_initial_weights(vae, init)
    elif spec.model.discrete is not None and spec.model.discrete.init == "vade":
        seed = spec.inference.schedule.seed
        vade_initialize(vae, data.scored("train", seed), spec.model.discrete.pretrain_epochs, seed, log=log or say_on_stderr,
                        fits=spec.model.discrete.mixture_fits)
    trainer = Trainer(vae, data, spec.inference, progress=progress, log=log, on_epoch=on_epoch)
    if note := carved_test_note(data, spec.data.test_fraction):
        trainer.log(note)
    tracker = tracker_of(spec) if out is not None and trainer.group.is_main else None
    writer, lock = None, None
    if out is not None:  # only once spec, data and model are known good; rank 0 alone writes

        def claim() -> None:
            nonlocal lock
            lock = claim_output_dir(out, force=force, log=say_on_stderr)  # what --force keeps is said even when quiet
            atomic_write_text(Path(out) / SPEC, spec.to_toml())
            record_outputs(out, [Path(out) / SPEC])

        distributed.on_main(claim)
        if trainer.group.is_main:
            writer = _RunWriter(Path(out), trainer, initialized_from=init, tracker=tracker, spec=spec)
    try:
        if before is not None:  # once the run directory is claimed: what it writes there is the run's
            before(trainer)
        return _run(trainer, writer)
    finally:
        if lock is not None:
            lock.release()


class Checked(NamedTuple):
    """What :func:`check` built: the ``vae`` and the prepared ``data`` (a Dataset)."""

    vae: object
    data: object


def check(spec, init=None) -> Checked:
    """Every check :func:`train` makes before its first step (data, model, their fit, the
    estimator, ``init``'s weights), without training: returns (vae, data)."""
    vae, data = prepare_training(spec)
    if init is not None:
        load_initial_weights(vae, init)
    Trainer(vae, data, spec.inference, progress=False)
    tracker_of(spec)
    return Checked(vae, data)


def load_initial_weights(vae, run) -> None:
    """``--init RUN``: the trained weights of another run (its saved ones), which must be of
    the same architecture; the optimizer, counters and RNGs start fresh."""
    path = Path(run)
    if not path.is_dir():
        raise RunError(f"$init {path}: no such run directory")
    checkpoint = load_checkpoint(path / CHECKPOINT)
    check_finite(path, checkpoint, "start from another run, or train without $init", "$init ")
    try:
        load_weights(vae, checkpoint)
    except RuntimeError as exc:
        raise RunError(f"$init {path}: its weights do not fit this spec's model ({exc}); "
                       "$init needs the same model table (latent size, networks, slots)") from None


EXTENDABLE = ("inference.schedule.epochs",)
CONFIRMABLE = ("tracking.uri", "tracking.log_dir")  # a resumed run's tracking destination, given again


def resume(path, *, progress: Optional[bool] = None, log=None, epochs: Optional[int] = None, on_epoch=None,
           before=None, tracking: Optional[dict] = None) -> Trainer:
    """Continue the run in ``path`` from its checkpoint, exactly where it stopped, or, with
    ``epochs``, train a finished run on to that many epochs: the same as a run trained to
    ``epochs`` from the start (nothing in the schedule depends on the total; the KL warm-up
    counts steps from the first), except for one that stopped early, which is refused.

    Under several processes rank 0 reads the spec and clears partial writes; every rank
    reads the checkpoint (on several machines the run directory must be on a shared file
    system), and the number of processes must be the one that wrote it. ``before`` and
    ``on_epoch`` are :func:`train`'s hooks (``before`` runs before the first step taken here).

    A run directory may come from someone else: its ``[tracking]`` table is followed only to
    stores inside it, unless ``tracking`` (the caller's own ``{"uri": ...}`` or
    ``{"log_dir": ...}``) gives the destination again."""
    path = Path(path)
    lock = None

    def spec_text() -> str:
        nonlocal lock
        if not path.is_dir():
            raise RunError(f"$resume {path}: no such run directory")
        lock = RunLock(path, log or say_on_stderr)  # before reading: a live writer is refused
        spec = read_spec(path)
        remove_partial_writes(path)
        if epochs is not None:
            if epochs < spec.inference.schedule.epochs:
                raise RunError(f"$resume {path}: inference.schedule.epochs = {epochs} is fewer than the run's "
                               f"{spec.inference.schedule.epochs}; give more epochs to train longer")
            spec.inference.schedule.epochs = epochs
        _confirm_tracking(spec, path, tracking or {})
        return spec.to_toml()

    try:
        spec = Spec.from_toml(distributed.broadcast_text(spec_text))
        return _resume(path, spec, progress, log, extended=epochs is not None, on_epoch=on_epoch, before=before)
    finally:
        if lock is not None:
            lock.release()


def _confirm_tracking(spec, path: Path, given: dict) -> None:
    """The run's tracking, with the caller's destinations; refused when it would send outside
    the run directory to a destination the caller did not give."""
    if spec.tracking is None:
        return
    spec.tracking.update({key: value for key, value in given.items() if key in spec.tracking})
    outside = target_outside(spec.tracking, path)
    if outside is not None and given.get(outside[0]) != outside[1]:
        key, value = outside
        raise RunError(f"$resume {path}: its spec sends tracking to {value!r}, outside the run directory; "
                       f"a resumed run tracks only into its own folder unless you give the destination again: "
                       f"--set tracking.{key}={value}")


def _resume(path: Path, spec, progress, log, extended: bool, on_epoch=None, before=None) -> Trainer:
    # no checkpoint: stopped before the first one was written, so it starts again (same seed)
    checkpoint = _resumable_checkpoint(path, spec) if (path / CHECKPOINT).exists() else None
    vae, data = prepare_training(spec)
    trainer = Trainer(vae, data, spec.inference, progress=progress, log=log, on_epoch=on_epoch)
    if checkpoint is not None:
        _restore(path, trainer, data, checkpoint)
    writer = None
    if trainer.group.is_main:
        writer = _RunWriter(path, trainer, resumed=checkpoint is not None, tracker=tracker_of(spec), spec=spec)
        if checkpoint is not None:
            writer.metrics()  # metrics.csv as of the checkpoint, whatever a kill left behind
    if extended:  # every check passed: the run's spec now says how long it trains
        distributed.on_main(lambda: atomic_write_text(path / SPEC, spec.to_toml()))
    if before is not None:
        before(trainer)
    return _run(trainer, writer)


def _resumable_checkpoint(path: Path, spec) -> dict:
    """The run's checkpoint, with a complete training state, of a run that has epochs left
    to train (else refused, saying what to do instead)."""
    checkpoint = load_checkpoint(path / CHECKPOINT)
    if "training" not in checkpoint:
        raise RunError(f"{path / CHECKPOINT}: holds weights only, no training state to resume from")
    try:
        state = checkpoint["training"]["state"]
        state["stopped_early"], state["epoch"] = bool(state["stopped_early"]), int(state["epoch"])
        checkpoint["data_shape"], checkpoint["num_data"] = list(checkpoint["data_shape"]), int(checkpoint["num_data"])
        checkpoint["training"]["world_size"] = int(checkpoint["training"]["world_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path / CHECKPOINT}: its training state is incomplete ({type(exc).__name__}: "
                       f"{str(exc)[:80]}); the file was altered: restore it or start a new run") from None
    # a run killed after its last checkpoint, before its figures and summary, is finished by resuming it
    ended = _summary_of(path).get("status") in ENDED
    if state["stopped_early"] and ended:
        raise RunError(
            f"$resume {path}: the run stopped early at epoch {state['epoch']} (no better validation ELBO for "
            f"inference.schedule.patience epochs); to train on, start a new run from its weights: "
            f"pyro-vae train --init {path} --out NEW"
        )
    if state["epoch"] >= spec.inference.schedule.epochs and ended:
        raise RunError(
            f"$resume {path}: the run already finished (epoch {state['epoch']} of "
            f"{spec.inference.schedule.epochs}); to train longer: pyro-vae train --resume {path} "
            f"--set inference.schedule.epochs=N, with N > {state['epoch']}"
        )
    return checkpoint


def _restore(path: Path, trainer: Trainer, data, checkpoint: dict) -> None:
    """The trainer set to the checkpoint's state, once the data and the number of processes
    are found to be the ones that wrote it."""
    if list(data.data_shape) != list(checkpoint["data_shape"]) or trainer.num_data != checkpoint["num_data"]:
        raise RunError(f"$resume {path}: the data no longer match the checkpoint (shape or size changed)")
    if checkpoint.get("data_sha256", data.sha256) != data.sha256:
        raise RunError(f"$resume {path}: {data.source} changed since the run started (its SHA-256 differs); "
                       "restore the file, or start a new run")
    saved = checkpoint["training"]["world_size"]
    if saved != trainer.group.world_size:
        raise RunError(
            f"$resume {path}: the run was trained by {saved} process(es), this is {trainer.group.world_size}; "
            f"resume with the same number (torchrun --nproc_per_node ... so that the world size is {saved})"
        )
    try:
        training = checkpoint["training"]
        training["last_weights"] = with_lacking(training["last_weights"], trainer.vae, checkpoint)
        trainer.restore(checkpoint)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path / CHECKPOINT}: cannot restore training state ({str(exc).splitlines()[0][:160]})") from None
