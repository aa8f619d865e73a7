"""A comparison's statistics: paired differences to the reference cell and their two
uncertainties (over examples and over seeds), and each cell's summary over seeds.

The rows are one per cell and seed (``workflows.compare`` reads them from the run
directories); nothing here reads or writes a file."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from ..infer.metrics import standard_error

CLASSIFICATION_SCORES = ("accuracy", "cluster_accuracy", "nmi")
DISCRETE_FIGURES = ("snr_classifier", *CLASSIFICATION_SCORES)  # only a model with a discrete latent has them
SUMMARIZED = ("log_likelihood", "diff_vs_reference", "elbo", "kl", "active_units", "snr_encoder", "snr_decoder",
              *DISCRETE_FIGURES)

Paired = Optional[tuple[np.ndarray, np.ndarray]]  # (per-example differences, their source rows), None if unpaired


def paired_differences(rows: list[dict], per_example: dict[tuple[str, int], tuple[Tensor, np.ndarray]], reference: str,
                       log: Callable[[str], None]) -> dict[tuple[str, int], Paired]:
    """Each row's difference to the reference cell of its seed, paired by example:
    ``diff_vs_reference`` = mean_n (log p(x_n | cell) - log p(x_n | reference)) and ``diff_se``,
    its standard error over examples (0 for the reference itself), set on the row; NaN,
    saying why, where the two were evaluated on other examples. ``per_example``:
    {(cell, seed): (log p(x_n) per example, float64, the examples' source rows)}. Returns
    {(cell, seed): (differences, rows) or None}."""
    paired = {}
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
    return paired


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


def aggregate(rows: list[dict], labels: list[str], timings: dict, paired: dict) -> dict:
    """Per cell: the mean over seeds of each figure with its standard error over seeds;
    the paired difference's standard error over examples (``diff_se_examples``, see
    :func:`se_over_examples`; ``paired``: {(cell, seed): (differences, rows) or None}) and
    over seeds (``diff_se_seeds``), the headline ``diff_se`` being the one over seeds when
    there are several (it covers training's randomness, which the examples' does not);
    timings (``timings``: {(cell, seed): seconds per step of each epoch}) as medians with
    their interquartile range over all epochs of all seeds."""
    summary = {}
    for label in labels:
        mine = [r for r in rows if r["cell"] == label]
        entry = _means_over_seeds(mine)
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


def _means_over_seeds(rows: list[dict]) -> dict:
    """Each figure's mean over one cell's seeds (``rows``) and its standard error over
    seeds, std(ddof=1) / sqrt(S) (None with one seed)."""
    entry = {}
    for key in SUMMARIZED:
        values = np.array([r.get(key, math.nan) if key in DISCRETE_FIGURES else r[key] for r in rows], dtype=float)
        entry[key] = float(values.mean())
        entry[f"{key}_se_seeds"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return entry
