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
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..analysis.compare_figures import comparison_figures
from ..analysis.comparison_table import comparison_markdown
from ..errors import RunError, SpecError
from ..files import atomic_write_json, atomic_write_text, read_csv, write_csv
from ..infer.evaluate import describe_active_units, standard_error
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
CLASSIFICATION_SCORES = ("accuracy", "cluster_accuracy", "nmi")
DISCRETE_FIGURES = ("snr_classifier", *CLASSIFICATION_SCORES)  # only a model with a discrete latent has them
PLAN, DONE, SNR_POINTS = "comparison_plan.json", "comparison_done.json", "snr_points.json"
SNR_AXES = ("inference.estimator", "model.posterior")  # gradient SNR is measured where one of these varies


def columns(axes: Sequence[Axis]) -> list[str]:
    """comparison.csv's columns: the cell, one per axis (its value), then the figures."""
    return ["cell", *(axis.path for axis in axes), *METRIC_COLUMNS]


def parse_estimators(text: str) -> list[tuple[str, dict]]:
    """``trace_elbo,iwae:k=5,renyi:alpha=0.5:k=5`` -> [(label, estimator table), ...]."""
    return [(value, parse_table(value, "estimators")) for value in estimator_axis(text).values]


def compare(
    *,
    model: Optional[str] = None,
    inference: Optional[str] = None,
    data: Optional[str] = None,
    vary: Sequence[str] = (),
    estimators: Optional[str] = None,
    zip_axes: bool = False,
    seeds: int = 3,
    overrides: Sequence[str] = (),
    out: Path,
    force: bool = False,
    reference: Optional[str] = None,
    split: str = "valid",
    samples: int = 1000,
    limit: Optional[int] = 2000,
    snr_repeats: int = 50,
    snr_k: Sequence[int] = (1, 5, 20),
    progress: Optional[bool] = False,
    log=print,
) -> dict:
    """Train and evaluate every cell with every seed; write comparison.csv/.json/.md and
    figures to ``out``, one run directory per cell and seed under ``out/runs``. ``vary``
    holds ``PATH=V1,V2,...`` axes, ``estimators`` is the shorthand for the estimator's.
    Run again with the same arguments, it continues an interrupted comparison."""
    axes = [parse_axis(text) for text in vary] + ([estimator_axis(estimators)] if estimators else [])
    if not axes:
        raise SpecError("nothing to compare: give {vary} KEY=VALUE,VALUE,... (e.g. model.prior.kind=standard_normal,vamp) "
                        "or {estimators} LIST")
    out = Path(out)
    base = load_spec(model, inference, data, overrides)
    if base.tracking is not None and base.tracking["kind"] == "mlflow" and base.tracking["uri"] is None:
        # every cell's run in one MLflow store, under the comparison's folder, an experiment named after it
        base.tracking["uri"] = f"sqlite:///{(out / MLFLOW_STORE).resolve()}"
        if base.tracking["experiment"] == "pyro-vae":
            base.tracking["experiment"] = out.resolve().name
    cells = plan_cells(base, axes, zip_axes)
    check_runs(len(cells), seeds, limit)
    labels = [cell.label for cell in cells]
    reference = reference or labels[0]
    if reference not in labels:
        raise SpecError(f"{{reference}} {reference!r} is not among the cells ({', '.join(labels)})")
    varies = [axis.path for axis in axes if len(set(axis.values)) > 1]
    snr = any(path.startswith(SNR_AXES) for path in varies)
    estimator_varies = any(path.startswith("inference.estimator") for path in varies)
    settings = {
        "model": model or DEFAULT_MODEL, "inference": inference or DEFAULT_INFERENCE, "data": data or DEFAULT_DATA,
        "overrides": list(overrides), "axes": [{"path": a.path, "name": a.name, "values": list(a.values)} for a in axes],
        "zip": zip_axes, "cells": labels, "seeds": seeds, "split": split, "samples": samples, "limit": limit,
        "snr": snr, "snr_repeats": snr_repeats if snr else None, "snr_k": list(snr_k) if estimator_varies else [],
    }
    plan = {"settings": settings, "specs": {cell.label: cell.spec.to_toml() for cell in cells}}
    lock = _claim(out, plan, force, log)
    # the cells' kinds were given here (--vary) or checked when the base spec was read: its runs are read back with them
    trusted = [kind for cell in cells for _, kind in kinds_in(cell.spec.to_dict())]
    try:
        with trusting_code(kinds=trusted):
            runs = [(cell, seed) for seed in range(seeds) for cell in cells]
            log(f"compare: {len(cells)} cell(s) x {seeds} seed(s) = {len(runs)} runs of "
                f"{base.inference.schedule.epochs} epochs, each then evaluated with K = {samples} on "
                f"{f'up to {limit}' if limit else 'all'} {split} examples" + (f", and gradient SNR measured 3 times with {snr_repeats} "
                                                                  "estimates" if snr else "") + f" -> {out}")
            timer = _Timer(len(runs), log)
            for number, (cell, seed) in enumerate(runs, 1):
                _run_cell(cell, seed, out, settings, timer, number, progress, log)
            report = _report(cells, axes, settings, reference, out, log)
            write_csv(out / "comparison.csv", report["rows"], columns(axes))
            atomic_write_json(out / "comparison.json", report)
            atomic_write_text(out / "comparison.md", comparison_markdown(report))
            comparison_figures(out, report)
            record_outputs(out, [out / "comparison.csv", out / "comparison.json", out / "comparison.md",
                                 *out.glob("comparison_*.png"), *tracking_outputs(out)])
            return report
    finally:
        lock.release()


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
        raise RunError(f"{{out}} {out}: holds a comparison with other cells or settings; run it with the same ones to "
                       "continue it, pass {force} to replace it, or choose another {out}")
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
    summary, _, _ = evaluate_run(run_dir, split=settings["split"], num_samples=settings["samples"],
                                 limit=settings["limit"], seed=0, device=spec.inference.schedule.device)
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
            run_dir = _run_dir(out, cell.label, seed)
            summary = json.loads((run_dir / "evaluation" / f"{settings['split']}.json").read_text())
            examples = np.load(run_dir / "evaluation" / f"{settings['split']}.npz")
            per_example[(cell.label, seed)] = (torch.from_numpy(examples["log_likelihood"]).double(), examples["index"])
            history = read_csv(run_dir / METRICS)
            run_summary = json.loads((run_dir / SUMMARY).read_text())
            train_size = run_summary["data"]["train"]
            steps_per_epoch = train_size // min(cell.spec.inference.schedule.batch_size, train_size)
            step_seconds = [r["seconds"] / steps_per_epoch for r in history]
            points = json.loads((run_dir / SNR_POINTS).read_text()) if settings["snr"] else []
            final = points[-1] if points else {}
            rows.append({
                "cell": cell.label,
                **cell.values,
                "seed": seed,
                "log_likelihood": summary["log_likelihood"],
                "log_likelihood_se": summary["log_likelihood_se"],
                "elbo": summary["elbo"],
                "kl": summary["kl"],
                "active_units": summary["active_units"],
                "active_units_by_layer": describe_active_units(summary),  # 'a of d: z1 a1 of d1, ...' with layers
                "seconds_per_step": float(np.median(step_seconds)) if step_seconds else math.nan,
                "seconds_per_epoch": float(np.median([r["seconds"] for r in history])) if history else math.nan,
                **{key: final.get(key, math.nan) for key in ("snr_encoder", "snr_decoder", "grad_var_encoder",
                                                             "grad_var_decoder", "snr_classifier", "grad_var_classifier")},
                **{key: summary.get(key, math.nan) for key in CLASSIFICATION_SCORES},
                "run": str(run_dir.relative_to(out)),
            })
            curves[(cell.label, seed)] = [r["val_elbo"] for r in history]
            timings[(cell.label, seed)] = step_seconds
            if points:
                snr_points[(cell.label, seed)] = points
    paired = {}  # (cell, seed): (per-example differences to the reference, their source rows), or None
    for row in rows:
        mine, index = per_example[(row["cell"], row["seed"])]
        theirs, their_index = per_example[(reference, row["seed"])]
        if not np.array_equal(index, their_index):
            log(f"{row['cell']} (seed {row['seed']}) was evaluated on other examples than {reference}: no paired "
                "difference (an axis changed the held-out data)")
            row["diff_vs_reference"] = row["diff_se"] = math.nan
            paired[(row["cell"], row["seed"])] = None
            continue
        diff = mine - theirs
        row["diff_vs_reference"] = diff.mean().item()
        row["diff_se"] = standard_error(diff) if row["cell"] != reference else 0.0
        paired[(row["cell"], row["seed"])] = (diff.numpy(), np.asarray(index))
    labels = [cell.label for cell in cells]
    snr_k_rows = _snr_against_k(cells, settings, reference, out, log) if settings["snr_k"] else []  # [] unless the estimator varies
    settings = {**settings, "reference": reference, "examples": len(per_example[(reference, 0)][0])}
    return {
        "settings": settings,
        "cells": {cell.label: cell.values for cell in cells},
        "rows": rows,
        "summary": _aggregate(rows, labels, timings, paired),
        "snr_points": [{"cell": l, "seed": s, "points": p} for (l, s), p in snr_points.items()],
        "snr_vs_k": snr_k_rows,
        "learning_curves": [{"cell": l, "seed": s, "val_elbo": c} for (l, s), c in curves.items()],
        "note": "standard errors are over per-example held-out estimates (paired across cells for the differences) "
                "and over seeds; this is not leave-one-out cross-validation",
    }


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


def se_over_examples(paired: list) -> float:
    """The standard error over examples of the paired difference's mean over seeds,
    mean_s mean_n d_sn (d_sn: seed s, example n; ``paired``: one (d_s, source rows) per
    seed, None where there is no paired difference).

    When every seed was evaluated on the same examples (a source's own held-out split,
    ``--limit`` subsets drawn with one seed), one example's differences are correlated
    across seeds, so they are averaged first: SE = std_n(mean_s d_sn) / sqrt(n). When each
    seed has examples of its own (splits drawn with the seed), the seeds' means are
    independent: SE = sqrt(sum_s SE_s^2) / S, with SE_s = std_n(d_sn) / sqrt(n_s)."""
    if not paired or any(p is None for p in paired):
        return math.nan
    if all(np.array_equal(index, paired[0][1]) for _, index in paired):
        return standard_error(np.mean([d for d, _ in paired], axis=0))
    return math.sqrt(sum(standard_error(d) ** 2 for d, _ in paired)) / len(paired)


def _aggregate(rows: list[dict], labels: list[str], timings: dict, paired: dict) -> dict:
    """Per cell: the mean over seeds of each figure with its standard error over seeds;
    the paired difference's standard error over examples (``diff_se_examples``, see
    :func:`se_over_examples`; ``paired``: {(cell, seed): (differences, rows) or None}) and
    over seeds (``diff_se_seeds``), the headline ``diff_se`` being the one over seeds when
    there are several (it covers training's randomness, which the examples' does not);
    timings as medians with their interquartile range over all epochs of all seeds."""
    summary = {}
    for label in labels:
        mine = [r for r in rows if r["cell"] == label]
        entry = {}
        for key in ("log_likelihood", "diff_vs_reference", "elbo", "kl", "active_units", "snr_encoder", "snr_decoder",
                    *DISCRETE_FIGURES):
            values = np.array([r.get(key, math.nan) if key in DISCRETE_FIGURES else r[key] for r in mine], dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_se_seeds"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        entry["diff_se_examples"] = float(se_over_examples([paired[(label, r["seed"])] for r in mine]))
        entry["diff_se_seeds"] = entry.pop("diff_vs_reference_se_seeds")
        several = entry["diff_se_seeds"] is not None
        entry["diff_se"] = entry["diff_se_seeds"] if several else entry["diff_se_examples"]
        entry["diff_se_over"] = "seeds" if several else "examples"
        steps = np.concatenate([np.asarray(timings[(label, r["seed"])], dtype=float) for r in mine])
        entry["seconds_per_step"] = float(np.median(steps)) if len(steps) else math.nan
        entry["seconds_per_step_quartiles"] = [float(q) for q in np.percentile(steps, [25, 75])] if len(steps) else None
        entry["seconds_per_epoch"] = float(np.median([r["seconds_per_epoch"] for r in mine]))
        summary[label] = entry
    return summary
