"""The analysis report (``report.md``): the run, the diagnostics and the figures of
``pyro-vae analyze`` on one page, in Markdown; the figures linked relative to its folder."""

from __future__ import annotations

from pathlib import Path

from . import arviz_compat
from .inference_data import khat_advice
from .text import describe_active_units, proposal_words


def _per_layer(figures: dict, rel, kind: str, what: str) -> str:
    """The report's lines for the per-layer figures of ``kind`` (none with one layer)."""
    prefix = f"{kind}_layer_"
    lines = [f"![{what} {key[len(prefix):]}]({rel(path)})\n\n" for key, path in figures.items() if key.startswith(prefix)]
    return "".join(lines)


def _covariate_section(figures: dict, rel) -> str:
    """The figures of :func:`covariate_figures`, where the model reads covariates."""
    names = [key.removeprefix("latent_space_") for key in figures if key.startswith("latent_space_")
             and f"samples_by_{key.removeprefix('latent_space_')}" in figures]
    if not names:
        return ""
    parts = ["## Covariates\n\nThe model reads covariates c (its decoder p(x|z, c) always). Means of q(z|x) coloured by each "
             "categorical covariate (what of it z still holds), and samples decoded under each of its values.\n"]
    for name in names:
        parts.append(f"![latent space by {name}]({rel(figures['latent_space_' + name])})\n\n"
                     f"![samples by {name}]({rel(figures['samples_by_' + name])})\n")
    return "\n".join(parts) + "\n"


def _discrete_section(diagnostics: dict, figures: dict, rel) -> str:
    """The report's part on the discrete latent y, when there is one."""
    if "class_samples" not in figures:
        return ""
    scores = ""
    if "accuracy" in diagnostics:
        scores = (f"argmax q(y|x) against the labels: accuracy {diagnostics['accuracy']:.1%} (y read as the label), "
                  f"clustering accuracy {diagnostics['cluster_accuracy']:.1%} (best one-to-one matching), "
                  f"NMI {diagnostics['nmi']:.3f}.\n\n![confusion matrix]({rel(figures['confusion'])})\n\n")
    return f"""## The discrete latent y

{scores}![latent space coloured by predicted y]({rel(figures['latent_space_predicted'])})

![class-conditional samples]({rel(figures['class_samples'])})

"""


def _fmt(entry) -> str:
    return f"{entry['mean']:.3f} +- {entry['se']:.3f}" if entry else "n/a"


def _number(value) -> float:
    """A number read from summary.json, NaN when it is not one (a file edited by hand)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def analysis_report(run, diagnostics: dict, figures: dict, folder: Path, pair) -> str:
    """report.md of ``run`` (a loaded run: its name, spec and summary are read) from
    analyze's ``diagnostics`` and ``figures`` (paths under ``folder``); ``pair``, the two
    examples the interpolation runs between."""
    s = run.summary
    spec = run.spec
    bands = diagnostics["khat_bands"]
    rel = lambda p: Path(p).relative_to(folder).as_posix()  # noqa: E731
    rows = [
        ("model", f"prior {spec.model.prior['kind']}, likelihood {spec.model.likelihood['kind']}, posterior "
                  f"{spec.model.posterior['kind']}, networks {spec.model.encoder['kind']}/{spec.model.decoder['kind']}, "
                  f"latent_dim {spec.model.latent_dim}"),
        ("estimator", f"{spec.inference.estimator['kind']}, {s.get('epochs', '?')} epochs on {s.get('device', '?')}"),
        ("best validation ELBO (training)", f"{_number(s.get('best_val_elbo')):.3f} at epoch {s.get('best_epoch', '?')}"),
        (f"log p(x), importance sampling, S = {diagnostics['samples']}", _fmt(diagnostics["is_log_likelihood"])),
        ("log p(x), PSIS", _fmt(diagnostics["psis_log_likelihood"])),
        ("k-hat < 0.5 (good)", f"{bands['good']['share']:.1%} ({bands['good']['count']})"),
        ("0.5 <= k-hat < 0.7 (usable)", f"{bands['ok']['share']:.1%} ({bands['ok']['count']})"),
        ("k-hat >= 0.7 (unreliable)", f"{bands['bad']['share']:.1%} ({bands['bad']['count']})"),
        ("active units", describe_active_units(diagnostics)),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    latent = diagnostics["latent_summary"]
    summary_rows = "\n".join(
        f"| {r['variable']} | {r['mean']:.3f} | {r['sd']:.3f} | {r[arviz_compat.LOW]:.3f} | {r[arviz_compat.HIGH]:.3f} |"
        for r in latent["table"]
    )
    return f"""# Analysis of `{run.path.name}`

{diagnostics['n']} examples of the `{diagnostics['split']}` split of {diagnostics['data']}, {diagnostics['samples']} draws
from {proposal_words(diagnostics.get('refine', 0))} per example ({diagnostics['draws_stored']} stored in `posterior.nc`). Log-likelihoods are in
{diagnostics['units']}, +- one standard error over examples.

| quantity | value |
| --- | --- |
{table}

{khat_advice(bands)}

k-hat is the Pareto shape of the largest importance weights p(x, z)/q(z|x) (PSIS, Vehtari et al., 2024): it says
how trustworthy q(z|x) is as a proposal for p(z|x) for each example (Yao et al., 2018). These are per-example
diagnostics of the amortized posterior, not leave-one-out cross-validation.

## Diagnostics

![k-hat per example]({rel(figures['khat'])})

## Training

![ELBO per epoch]({rel(figures['elbo'])})

## Latent space

![posterior means of the two most active dimensions]({rel(figures['latent_space'])})

{_per_layer(figures, rel, "latent_space", "the two most active dimensions of")}Latent posterior of three examples (lowest, median and highest k-hat: {', '.join(map(str, latent['examples']))}), most
active dimensions (mean, sd and the {latent['interval']}, highest-density interval, of the stored draws):

| variable | mean | sd | {arviz_compat.INTERVAL_LABEL}: low | high |
| --- | --- | --- | --- | --- |
{summary_rows}

![marginal posteriors]({rel(figures['posterior'])})

![joint posteriors]({rel(figures['pair'])})

{_discrete_section(diagnostics, figures, rel)}{_covariate_section(figures, rel)}## What the model does

![reconstructions]({rel(figures['reconstructions'])})

![samples from the prior]({rel(figures['samples'])})

Interpolation between examples {pair[0]} and {pair[1]}:

![interpolation]({rel(figures['interpolation'])})

![traversals]({rel(figures['traversals'])})

{_per_layer(figures, rel, "traversals", "traversals of")}"""
