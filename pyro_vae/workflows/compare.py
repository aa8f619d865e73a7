"""Model variants and estimators compared on equal terms, along any axis of the spec.

The cells (see :mod:`pyro_vae.workflows.cells`: ``--vary model.prior.kind=...``, crossed
or zipped; ``--estimators`` is ``--vary inference.estimator=...``) are each trained with
every seed, and the protocol makes their differences measured rather than drowned in
noise (common random numbers):

* the same data order for every cell of a seed (the order has a generator of its own,
  seeded with the seed);
* the same initial weights for every part the cells share (each part of a model draws
  them from a stream of its own, see :mod:`pyro_vae.model.build`): comparing priors,
  the encoder and decoder start identical;
* the same held-out examples and the same K for every cell.

Reported per cell and seed:

* held-out log p(x) (importance sampled) with its standard error over examples, and
  the paired difference to a reference cell: the mean over examples of
  log p(x_n | cell) - log p(x_n | reference), same seed, with the standard error of
  those differences (the pairing removes the between-example variance);
* final ELBO, KL, active units; wall-clock seconds per step and per epoch, as medians
  over epochs (with the interquartile range over all epochs of all seeds), so that a
  busy machine slowing a few epochs does not move them;
* where the estimator or the posterior varies: the gradient signal-to-noise ratio of
  encoder and decoder parameters (Rainforth et al., 2018), SNR = mean over parameters
  of |E[g]| / std[g], and the gradient variance, from repeated estimates on one fixed
  batch at fixed points of training (before the first step, half way, at the end);
  and where the estimator varies, SNR against K at one common set of weights.

Two uncertainties of a difference are reported, named: over examples (the paired SE
above, which fixed weights leave) and over seeds (training's randomness: initialization,
data order, the estimator's draws). With several seeds the headline is the one over
seeds. Nothing here is leave-one-out cross-validation (with local latents and fitted
networks it would not be).

A comparison is resumable: its plan (cells and settings) is kept in the output folder,
each run directory marks itself done once evaluated, and the same command run again
keeps the finished runs, resumes a half-trained one from its checkpoint and runs the rest.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..analysis.compare_figures import comparison_figures
from ..analysis.comparison_stats import CLASSIFICATION_SCORES, aggregate, paired_differences
from ..analysis.comparison_table import comparison_markdown
from ..analysis.text import describe_active_units
from ..errors import RunError, SpecError
from ..files import atomic_write_json, atomic_write_text, read_csv, write_csv
from ..infer.gradients import SNRProbe, snr_against_k
from ..devices import resolve_device
from ..runs import CHECKPOINT, METRICS, SUMMARY, RunLock, claim_output_dir, load_run, record_outputs
from ..spec import DEFAULT_DATA, DEFAULT_INFERENCE, DEFAULT_MODEL, load_spec
from ..registry import kinds_in, trusting_code
from ..tracking import MLFLOW_STORE, tracking_outputs
from .cells import Axis, Cell, estimator_axis, parse_axis, parse_table, plan_cells
from .evaluate import evaluate_run, run_dataset
from .memory import check_runs
from .train import resume, train

METRIC_COLUMNS = [
    "seed",
    "log_likelihood",
    "log_likelihood_se",
    "diff_vs_reference",
    "diff_se",
    "elbo",
    "kl",
    "active_units",
    "active_units_by_layer",
    "seconds_per_step",
    "seconds_per_epoch",
    "snr_encoder",
    "snr_decoder",
    "grad_var_encoder",
    "grad_var_decoder",
    "snr_classifier",
    "grad_var_classifier",
    "accuracy",
    "cluster_accuracy",
    "nmi",
    "run",
]
PLAN, DONE, SNR_POINTS = "comparison_plan.json", "comparison_done.json", "snr_points.json"
SNR_AXES = ("inference.estimator", "model.posterior")  # gradient SNR is measured where one of these varies


def columns(axes: Sequence[Axis]) -> list[str]:
    """comparison.csv's columns: the cell, one per axis (its value), then the figures."""
    return ["cell", *(axis.path for axis in axes), *METRIC_COLUMNS]


def parse_estimators(text: str) -> list[tuple[str, dict]]:
    """``trace_elbo,iwae:k=5,renyi:alpha=0.5:k=5`` -> [(label, estimator table), ...]."""
    return [(value, parse_table(value, "estimators")) for value in estimator_axis(text).values]


@dataclass(frozen=True)
class Design:
    """What is compared: ``vary`` holds ``PATH=V1,V2,...`` axes (crossed, or zipped with
    ``zip_axes``), ``estimators`` is the shorthand for the estimator's axis; every cell is
    trained with ``seeds`` seeds and its differences taken to the ``reference`` cell (the
    first cell by default)."""

    vary: Sequence[str] = ()
    estimators: Optional[str] = None
    zip_axes: bool = False
    seeds: int = 3
    reference: Optional[str] = None


@dataclass(frozen=True)
class EvaluationSettings:
    """How every run is evaluated: log p(x) with K = ``samples`` importance samples on up to
    ``limit`` examples (None: all) of ``split``, the same examples for every cell."""

    split: str = "valid"
    samples: int = 1000
    limit: Optional[int] = 2000


@dataclass(frozen=True)
class SNRSettings:
    """Where the estimator or the posterior varies: ``repeats`` gradient estimates per SNR
    point, and the K of the SNR-against-K curve (where the estimator varies)."""

    repeats: int = 50
    k: Sequence[int] = (1, 5, 20)


@dataclass
class Comparison:
    """What ``compare`` wrote to ``folder``: ``report`` is comparison.json's content (the
    settings, one row per cell and seed, each cell's summary over seeds, ...)."""

    report: dict
    folder: Path

    @property
    def table(self) -> Path:
        return self.folder / "comparison.md"


def compare(
    design: Design,
    *,
    out: Path,
    model: Optional[str] = None,
    inference: Optional[str] = None,
    data: Optional[str] = None,
    overrides: Sequence[str] = (),
    evaluation: EvaluationSettings = EvaluationSettings(),
    snr: SNRSettings = SNRSettings(),
    force: bool = False,
    progress: Optional[bool] = False,
    log=print,
) -> Comparison:
    """Train and evaluate every cell of ``design`` with every seed; write comparison.csv/.json/.md
    and figures to ``out``, one run directory per cell and seed under ``out/runs``. The
    base spec is ``model``, ``inference``, ``data`` and ``overrides``, as for ``train``.
    Run again with the same arguments, it continues an interrupted comparison."""
    axes = [parse_axis(text) for text in design.vary] + ([estimator_axis(design.estimators)] if design.estimators else [])
    if not axes:
        raise SpecError("nothing to compare: give $vary KEY=VALUE,VALUE,... (e.g. model.prior.kind=standard_normal,vamp) "
                        "or $estimators LIST")
    out = Path(out)
    base = load_spec(model, inference, data, overrides)
    _one_mlflow_store(base, out)
    cells = plan_cells(base, axes, design.zip_axes)
    check_runs(len(cells), design.seeds, evaluation.limit)
    labels = [cell.label for cell in cells]
    reference = design.reference or labels[0]
    if reference not in labels:
        raise SpecError(f"$reference {reference!r} is not among the cells ({', '.join(labels)})")
    settings = _settings(model, inference, data, overrides, design, axes, labels, evaluation, snr)
    plan = {"settings": settings, "specs": {cell.label: cell.spec.to_toml() for cell in cells}}
    lock = _claim(out, plan, force, log)
    # the cells' kinds were given here (--vary) or checked when the base spec was read: its runs are read back with them
    trusted = [kind for cell in cells for _, kind in kinds_in(cell.spec.to_dict())]
    try:
        with trusting_code(kinds=trusted):
            runs = [(cell, seed) for seed in range(design.seeds) for cell in cells]
            log(_plan_line(len(cells), runs, base.inference.schedule.epochs, settings, out))
            timer = _Timer(len(runs), log)
            for number, (cell, seed) in enumerate(runs, 1):
                _run_cell(cell, seed, out, settings, timer, number, progress, log)
            report = _report(cells, axes, settings, reference, out, log)
            _write(out, report, axes)
            return Comparison(report, out)
    finally:
        lock.release()


def _one_mlflow_store(base, out: Path) -> None:
    """Every cell's run in one MLflow store, under the comparison's folder, in an experiment
    named after it (where the spec tracks to MLflow without a store of its own)."""
    if base.tracking is not None and base.tracking["kind"] == "mlflow" and base.tracking["uri"] is None:
        base.tracking["uri"] = f"sqlite:///{(out / MLFLOW_STORE).resolve()}"
        if base.tracking["experiment"] == "pyro-vae":
            base.tracking["experiment"] = out.resolve().name


def _settings(model, inference, data, overrides, design: Design, axes: list[Axis], labels: list[str],
              evaluation: EvaluationSettings, snr: SNRSettings) -> dict:
    """The comparison's settings, as its plan keeps them (the same ones continue it)."""
    varies = [axis.path for axis in axes if len(set(axis.values)) > 1]
    measures_snr = any(path.startswith(SNR_AXES) for path in varies)
    estimator_varies = any(path.startswith("inference.estimator") for path in varies)
    return {
        "model": model or DEFAULT_MODEL, "inference": inference or DEFAULT_INFERENCE, "data": data or DEFAULT_DATA,
        "overrides": list(overrides), "axes": [{"path": a.path, "name": a.name, "values": list(a.values)} for a in axes],
        "zip": design.zip_axes, "cells": labels, "seeds": design.seeds, "split": evaluation.split,
        "samples": evaluation.samples, "limit": evaluation.limit, "snr": measures_snr,
        "snr_repeats": snr.repeats if measures_snr else None, "snr_k": list(snr.k) if estimator_varies else [],
    }


def _plan_line(cells: int, runs: list, epochs: int, settings: dict, out: Path) -> str:
    limit, split, snr = settings["limit"], settings["split"], settings["snr"]
    return (f"compare: {cells} cell(s) x {settings['seeds']} seed(s) = {len(runs)} runs of "
            f"{epochs} epochs, each then evaluated with K = {settings['samples']} on "
            f"{f'up to {limit}' if limit else 'all'} {split} examples" + (f", and gradient SNR measured 3 times with "
                                                                          f"{settings['snr_repeats']} estimates" if snr else "")
            + f" -> {out}")


def _write(out: Path, report: dict, axes: list[Axis]) -> None:
    """comparison.csv, .json, .md and the figures, recorded in the folder's manifest."""
    write_csv(out / "comparison.csv", report["rows"], columns(axes))
    atomic_write_json(out / "comparison.json", report)
    atomic_write_text(out / "comparison.md", comparison_markdown(report))
    comparison_figures(out, report)
    record_outputs(out, [out / "comparison.csv", out / "comparison.json", out / "comparison.md",
                         *out.glob("comparison_*.png"), *tracking_outputs(out)])


def _claim(out: Path, plan: dict, force: bool, log) -> RunLock:
    """Lock ``out``: the same comparison found there is continued; another one, or other
    files, are refused unless ``force``, which removes what a comparison wrote."""
    plan = json.loads(json.dumps(plan))  # as it reads back
    if (out / PLAN).is_file() and not force:
        lock = RunLock(out, log)
        try:
            earlier = json.loads((out / PLAN).read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier == plan:
            done = sum(1 for _ in (out / "runs").glob(f"*/{DONE}"))
            log(f"{out}: continuing the comparison started there ({done} run(s) already done are kept)")
            return lock
        lock.release()
        raise RunError(f"$out {out}: holds a comparison with other cells or settings; run it with the same ones to "
                       "continue it, pass $force to replace it, or choose another $out")
    lock = claim_output_dir(out, force=force, log=log, kind="comparison", resumable=False)
    atomic_write_json(out / PLAN, plan)
    record_outputs(out, [out / PLAN])
    return lock


class _Timer:
    """How many runs are done, and the time left at the pace so far."""

    def __init__(self, total: int, log):
        self.total, self.log, self.seconds, self.timed = total, log, 0.0, 0

    def done(self, number: int, text: str, seconds: Optional[float]) -> None:
        if seconds is not None:
            self.seconds, self.timed = self.seconds + seconds, self.timed + 1
        left = self.total - number
        eta = f"; about {_duration(left * self.seconds / self.timed)} left" if left and self.timed else ""
        self.log(f"[{number}/{self.total}] {text}{eta}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _SavedProbe(SNRProbe):
    """The SNR probe of one run, its points kept in the run directory as measured, so that
    a resumed run neither loses nor repeats them."""

    def __init__(self, path: Path, repeats: int, batch_size: int):
        super().__init__(repeats, batch_size)
        self.path = path
        if path.is_file():
            self.points = json.loads(path.read_text())

    def before(self, trainer) -> None:
        """Before the first step of training (not before the first step of a resumed one)."""
        if trainer.state.epoch == 0:
            self.measure(trainer)

    def measure(self, trainer) -> None:
        if any(point["epoch"] == trainer.state.epoch for point in self.points):
            return
        super().measure(trainer)
        atomic_write_json(self.path, self.points)
        record_outputs(self.path.parent, [self.path])


def _run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / f"{_slug(label)}-seed{seed}"


def _run_cell(cell: Cell, seed: int, out: Path, settings: dict, timer: _Timer, number: int, progress, log) -> None:
    """Train (or resume) and evaluate one cell with one seed, unless done before."""
    run_dir = _run_dir(out, cell.label, seed)
    name = f"{cell.label} (seed {seed})"
    if (run_dir / DONE).is_file():
        timer.done(number, f"{name}: done before, kept", None)
        return
    started = time.perf_counter()
    spec = cell.spec.model_copy(deep=True)
    spec.inference.schedule.seed = seed
    probe = _SavedProbe(run_dir / SNR_POINTS, settings["snr_repeats"], spec.inference.schedule.batch_size) \
        if settings["snr"] else None
    hooks = dict(on_epoch=probe.on_epoch, before=probe.before) if probe else {}
    quiet = dict(progress=progress, log=lambda _: None)
    status = _status(run_dir)
    if status == "trained":
        log(f"{name}: trained before, evaluating")
    elif status == "started":
        log(f"{name}: resuming its training from {run_dir}")
        resume(run_dir, **quiet, **hooks, tracking=_destination(spec.tracking))
    else:
        log(f"{name}: training -> {run_dir}")
        record_outputs(out, [], runs=[run_dir.relative_to(out).as_posix()])
        train(spec, run_dir, force=True, **quiet, **hooks)
    trained = time.perf_counter()
    log(f"{name}: evaluating log p(x) with K = {settings['samples']}")
    summary = evaluate_run(run_dir, split=settings["split"], num_samples=settings["samples"],
                           limit=settings["limit"], seed=0, device=spec.inference.schedule.device).summary
    train_seconds, evaluate_seconds = trained - started, time.perf_counter() - trained
    atomic_write_json(run_dir / DONE, {"train_seconds": train_seconds, "evaluate_seconds": evaluate_seconds})
    record_outputs(run_dir, [run_dir / DONE])
    timer.done(number, f"{name}: log p(x) {summary['log_likelihood']:.3f} (trained in {_duration(train_seconds)}, "
                       f"evaluated in {_duration(evaluate_seconds)})", train_seconds + evaluate_seconds)


def _destination(tracking) -> dict:
    """The comparison's own tracking destination, given again to a resumed run of it."""
    return {key: value for key, value in (tracking or {}).items() if key in ("uri", "log_dir") and value is not None}


def _status(run_dir: Path) -> str:
    """'trained' (finished training), 'started' (a checkpoint to resume from) or 'new'."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return "new"
    if summary.get("status") in ("completed", "early_stopped"):
        return "trained"
    return "started" if (run_dir / CHECKPOINT).is_file() else "new"


def _report(cells: list[Cell], axes: list[Axis], settings: dict, reference: str, out: Path, log) -> dict:
    """The comparison's figures, read back from the run directories."""
    rows, curves, timings, snr_points, per_example = [], {}, {}, {}, {}
    for seed in range(settings["seeds"]):
        for cell in cells:
            key = (cell.label, seed)
            row, curves[key], timings[key], points, per_example[key] = _read_run(cell, seed, settings, out)
            rows.append(row)
            if points:
                snr_points[key] = points
    paired = paired_differences(rows, per_example, reference, log)
    labels = [cell.label for cell in cells]
    snr_k_rows = _snr_against_k(cells, settings, reference, out, log) if settings["snr_k"] else []  # [] unless the estimator varies
    settings = {**settings, "reference": reference, "examples": len(per_example[(reference, 0)][0])}
    return {
        "settings": settings,
        "cells": {cell.label: cell.values for cell in cells},
        "rows": rows,
        "summary": aggregate(rows, labels, timings, paired),
        "snr_points": [{"cell": l, "seed": s, "points": p} for (l, s), p in snr_points.items()],
        "snr_vs_k": snr_k_rows,
        "learning_curves": [{"cell": l, "seed": s, "val_elbo": c} for (l, s), c in curves.items()],
        "note": "standard errors are over per-example held-out estimates (paired across cells for the differences) "
                "and over seeds; this is not leave-one-out cross-validation",
    }


def _read_run(cell: Cell, seed: int, settings: dict, out: Path) -> tuple:
    """One run's row of comparison.csv, its validation ELBO per epoch, its seconds per step
    per epoch, its SNR points and its per-example (log p(x), source rows), from its files."""
    run_dir = _run_dir(out, cell.label, seed)
    summary = json.loads((run_dir / "evaluation" / f"{settings['split']}.json").read_text())
    examples = np.load(run_dir / "evaluation" / f"{settings['split']}.npz")
    per_example = (torch.from_numpy(examples["log_likelihood"]).double(), examples["index"])
    history = read_csv(run_dir / METRICS)
    train_size = json.loads((run_dir / SUMMARY).read_text())["data"]["train"]
    steps_per_epoch = train_size // min(cell.spec.inference.schedule.batch_size, train_size)
    step_seconds = [r["seconds"] / steps_per_epoch for r in history]
    points = json.loads((run_dir / SNR_POINTS).read_text()) if settings["snr"] else []
    final = points[-1] if points else {}
    row = {
        "cell": cell.label,
        **cell.values,
        "seed": seed,
        **{key: summary[key] for key in ("log_likelihood", "log_likelihood_se", "elbo", "kl", "active_units")},
        "active_units_by_layer": describe_active_units(summary),  # 'a of d: z1 a1 of d1, ...' with layers
        "seconds_per_step": float(np.median(step_seconds)) if step_seconds else math.nan,
        "seconds_per_epoch": float(np.median([r["seconds"] for r in history])) if history else math.nan,
        **{key: final.get(key, math.nan) for key in ("snr_encoder", "snr_decoder", "grad_var_encoder",
                                                     "grad_var_decoder", "snr_classifier", "grad_var_classifier")},
        **{key: summary.get(key, math.nan) for key in CLASSIFICATION_SCORES},
        "run": str(run_dir.relative_to(out)),
    }
    return row, [r["val_elbo"] for r in history], step_seconds, points, per_example


def _snr_against_k(cells: list[Cell], settings: dict, reference: str, out: Path, log) -> list[dict]:
    """SNR against K of every K-sample estimator among the cells, all at the reference
    cell's trained weights (seed 0)."""
    estimators = {}
    for cell in cells:
        table = cell.spec.inference.estimator
        if "k" in table:
            estimators.setdefault(cell.values.get("inference.estimator", cell.label), dict(table))
    if not estimators:
        return []
    spec = next(cell.spec for cell in cells if cell.label == reference)
    log(f"gradient SNR against K = {', '.join(map(str, settings['snr_k']))} for {', '.join(estimators)}, "
        f"at {reference}'s weights (seed 0)")
    device = resolve_device(spec.inference.schedule.device)
    run = load_run(_run_dir(out, reference, 0), device)
    dataset = run_dataset(run, device=device)
    if dataset.coding:  # the probes' model and guide read the batch rows' covariates
        run.vae.conditioning.observe(dataset.covariates["train"])
    return snr_against_k(run.vae, dataset, list(estimators.items()), settings["snr_k"], settings["snr_repeats"],
                         spec.inference.schedule.batch_size, spec.inference.schedule.beta)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label.replace(":", "_").replace("=", ""))
