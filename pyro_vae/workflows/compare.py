"""Estimators compared on equal terms.

Every estimator is trained with every seed from the same initialization and the same
data order (both fixed by the seed), then evaluated on the same held-out examples
with the same number K of importance samples. Reported per estimator and seed:

* held-out log p(x) (importance sampled) with its standard error over examples, and
  the paired difference to a reference estimator: the mean over examples of
  log p(x_n | estimator) - log p(x_n | reference), same seed, with the standard error
  of those differences (the pairing removes the between-example variance);
* final ELBO, KL, active units; wall-clock seconds per step and per epoch, as medians
  over epochs (with the interquartile range over all epochs of all seeds), so that a
  busy machine slowing a few epochs does not move them;
* the gradient signal-to-noise ratio of encoder and decoder parameters (Rainforth et
  al., 2018), SNR = mean over parameters of |E[g]| / std[g], and the gradient variance,
  from repeated estimates on one fixed batch at fixed points of training (before the
  first step, half way, at the end);
* SNR against K for the estimators that take K, at one common set of weights.

Two uncertainties of a difference are reported, named: over examples (the paired SE
above, which fixed weights leave) and over seeds (training's randomness: initialization,
data order, the estimator's draws). With several seeds the headline is the one over
seeds. Nothing here is leave-one-out cross-validation (with local latents and fitted
networks it would not be).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..analysis.compare_figures import comparison_figures
from ..errors import SpecError
from ..params import toml_value
from ..files import atomic_write_json, write_csv
from ..infer.evaluate import standard_error
from ..infer.gradients import SNRProbe, snr_against_k
from ..runs import claim_output_dir
from ..spec import DEFAULT_DATA, DEFAULT_INFERENCE, DEFAULT_MODEL, Spec, load_spec
from .evaluate import evaluate_run
from .train import train
COLUMNS = [
    "estimator",
    "seed",
    "log_likelihood",
    "log_likelihood_se",
    "diff_vs_reference",
    "diff_se",
    "elbo",
    "kl",
    "active_units",
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
def parse_estimators(text: str) -> list[tuple[str, dict]]:
    """``trace_elbo,iwae:k=5,renyi:alpha=0.5:k=5`` -> [(label, estimator table), ...]."""
    entries = []
    for label in (part.strip() for part in text.split(",")):
        if not label:
            continue
        kind, *settings = label.split(":")
        table: dict = {"kind": kind}
        for setting in settings:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise SpecError(f"{{estimators}} {label!r}: expected kind:key=value, e.g. iwae:k=5")
            table[key] = toml_value(value)
        entries.append((label, table))
    labels = [label for label, _ in entries]
    if len(entries) < 1 or len(set(labels)) != len(labels):
        raise SpecError(f"{{estimators}} {text!r}: give one or more distinct estimators, comma-separated")
    return entries



def compare(
    *,
    model: Optional[str] = None,
    inference: Optional[str] = None,
    data: Optional[str] = None,
    estimators: str,
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
    log=print,
) -> dict:
    """Train, evaluate and compare estimators; write comparison.csv/.json and figures to ``out``."""
    entries = parse_estimators(estimators)
    labels = [label for label, _ in entries]
    reference = reference or labels[0]
    if reference not in labels:
        raise SpecError(f"{{reference}} {reference!r} is not among {{estimators}} ({', '.join(labels)})")
    base = load_spec(model, inference, data, overrides)
    specs = {}
    for label, table in entries:  # validate everything before training anything
        raw = base.to_dict()
        raw["inference"]["estimator"] = table
        try:
            specs[label] = Spec.from_dict(raw)
        except SpecError as exc:
            raise SpecError(f"{{estimators}} {label}: {exc}") from None
    out = Path(out)
    # a live comparison in ``out`` is refused; --force removes an earlier one's cells, tables and figures
    with claim_output_dir(out, force=force, log=log, files=("comparison.csv", "comparison.json"), folders=("runs",),
                          patterns=("comparison_*.png",), resumable=False):
        rows, curves, snr_points, evaluations, timings = [], {}, {}, {}, {}
        reference_weights = None
        for seed in range(seeds):
            for label, _ in entries:
                spec = specs[label].model_copy(deep=True)
                spec.inference.schedule.seed = seed
                run_dir = out / "runs" / f"{_slug(label)}-seed{seed}"
                log(f"training {label} (seed {seed}) -> {run_dir}")
                probe = SNRProbe(snr_repeats, spec.inference.schedule.batch_size)
                trainer = train(spec, run_dir, force=True, progress=False, log=lambda _: None,
                                on_epoch=probe.on_epoch, before=probe.measure)
                summary, _, result = evaluate_run(run_dir, split=split, num_samples=samples, limit=limit, seed=0,
                                                  device=str(trainer.device))
                evaluations[(label, seed)] = result.log_likelihood.double().cpu()
                history = trainer.state.history
                # per epoch: robust to a busy machine slowing a few epochs (medians and quartiles below)
                step_seconds = [r["seconds"] / trainer.steps_per_epoch for r in history]
                final = probe.points[-1]
                rows.append({
                    "estimator": label,
                    "seed": seed,
                    "log_likelihood": summary["log_likelihood"],
                    "log_likelihood_se": summary["log_likelihood_se"],
                    "elbo": summary["elbo"],
                    "kl": summary["kl"],
                    "active_units": summary["active_units"],
                    "seconds_per_step": float(np.median(step_seconds)) if step_seconds else math.nan,
                    "seconds_per_epoch": float(np.median([r["seconds"] for r in history])) if history else math.nan,
                    "snr_encoder": final.get("snr_encoder", math.nan),
                    "snr_decoder": final.get("snr_decoder", math.nan),
                    "grad_var_encoder": final.get("grad_var_encoder", math.nan),
                    "grad_var_decoder": final.get("grad_var_decoder", math.nan),
                    "snr_classifier": final.get("snr_classifier", math.nan),
                    "grad_var_classifier": final.get("grad_var_classifier", math.nan),
                    **{k: summary.get(k, math.nan) for k in CLASSIFICATION_SCORES},
                    "run": str(run_dir.relative_to(out)),
                })
                curves[(label, seed)] = [r["val_elbo"] for r in history]
                timings[(label, seed)] = step_seconds
                snr_points[(label, seed)] = probe.points
                if label == reference and seed == 0:
                    reference_weights = (trainer.vae, trainer.data)
        for row in rows:
            diff = evaluations[(row["estimator"], row["seed"])] - evaluations[(reference, row["seed"])]
            row["diff_vs_reference"] = diff.mean().item()
            row["diff_se"] = standard_error(diff) if row["estimator"] != reference else 0.0
        k_estimators = [(label, spec.inference.estimator) for label, spec in specs.items() if "k" in spec.inference.estimator]
        snr_k_rows = []
        if k_estimators and snr_k and reference_weights is not None:
            vae, dataset = reference_weights
            snr_k_rows = snr_against_k(vae, dataset, k_estimators, snr_k, snr_repeats, base.inference.schedule.batch_size,
                                       base.inference.schedule.beta)
        summary = _aggregate(rows, labels, timings)
        report = {
            "settings": {
                "model": model or DEFAULT_MODEL, "inference": inference or DEFAULT_INFERENCE, "data": data or DEFAULT_DATA, "overrides": list(overrides), "estimators": labels,
                "reference": reference, "seeds": seeds, "split": split, "samples": samples, "limit": limit,
                "snr_repeats": snr_repeats, "snr_k": list(snr_k),
            },
            "rows": rows,
            "summary": summary,
            "snr_points": [{"estimator": l, "seed": s, "points": p} for (l, s), p in snr_points.items()],
            "snr_vs_k": snr_k_rows,
            "learning_curves": [{"estimator": l, "seed": s, "val_elbo": c} for (l, s), c in curves.items()],
            "note": "standard errors are over per-example held-out estimates (paired across estimators for the "
                    "differences); this is not leave-one-out cross-validation",
        }
        write_csv(out / "comparison.csv", rows, COLUMNS)
        atomic_write_json(out / "comparison.json", report)

        comparison_figures(out, report)
        return report


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label.replace(":", "_").replace("=", ""))


def _aggregate(rows: list[dict], labels: list[str], timings: dict) -> dict:
    """Per estimator: the mean over seeds of each figure with its standard error over seeds;
    the paired difference's standard error over examples (``diff_se_examples``) and over
    seeds (``diff_se_seeds``), the headline ``diff_se`` being the one over seeds when there
    are several (it covers training's randomness, which the examples' does not); timings
    as medians with their interquartile range over all epochs of all seeds."""
    summary = {}
    for label in labels:
        mine = [r for r in rows if r["estimator"] == label]
        entry = {}
        for key in ("log_likelihood", "diff_vs_reference", "elbo", "kl", "active_units", "snr_encoder", "snr_decoder",
                    *DISCRETE_FIGURES):
            values = np.array([r.get(key, math.nan) if key in DISCRETE_FIGURES else r[key] for r in mine], dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_se_seeds"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        entry["diff_se_examples"] = float(np.sqrt(np.mean([r["diff_se"] ** 2 for r in mine])) / math.sqrt(len(mine)))
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
