"""``pyro-vae analyze``: ArviZ data (0.x or 1.x), PSIS diagnostics, figures and a one-page report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..infer.evaluate import (BUDGET, active_unit_summary, classification_summary, describe_active_units,
                              posterior_mean_covariance, standard_error)
from .. import distributed
from ..analysis.discrete import class_probabilities, class_samples, confusion_matrix
from ..analysis.figures import Look, elbo_curves, image_panel, reconstruction_panel
from ..analysis import arviz_compat
from ..analysis.inference_data import draws_to_groups, khat_advice, khat_bands, posterior_draws_sharded
from ..analysis.plots import example_posteriors, gaussian_moments, interpolation, khat_plot, latent_space, traversals
from ..files import atomic_path, atomic_write_json, atomic_write_text, check_room, output_folder
from ..devices import resolve_device
from ..model.condition import given
from ..runs import load_run, record_outputs
from .evaluate import heldout

FOLDER = "analysis"


def analyze_run(path, data=None, split="valid", num_samples=1000, limit: Optional[int] = 1000, draws: int = 200,
                seed: int = 0, device="auto", budget: int = BUDGET) -> Optional[dict]:
    """Write RUN/analysis/: posterior.nc, diagnostics.json, figures and report.md. Under
    several processes the draws are shared among the ranks in seeded blocks and rank 0
    alone writes (the others return None)."""
    device = resolve_device(device, "{device}")
    group = distributed.use_device(device)
    run = load_run(path, device)
    examples = heldout(run, data, split, limit, seed, device)
    x, labels, source = examples.x, examples.labels, examples.source
    examples_label_names = examples.label_names
    if not isinstance(x, torch.Tensor):  # a streamed split: the analysis holds its examples' draws anyway
        x = x[:]
    run.vae.eval()
    c = examples.condition  # each example's covariates, where the model reads them
    posterior = posterior_draws_sharded(run.vae, x, num_samples, draws, budget, seed, group, c)
    if not group.is_main:
        return None
    torch.manual_seed(seed)  # the figures' draws
    groups = draws_to_groups(posterior, x, labels)
    if run.vae.layers > 1:  # one variable per stochastic layer beside the whole vector z
        start = 0
        for name, dim in zip(run.vae.site_names, run.vae.layer_dims):
            layer = groups["posterior"]["z"].isel(latent=slice(start, start + dim))
            groups["posterior"][name] = layer.rename(latent=f"latent_{name}").assign_coords({f"latent_{name}": np.arange(dim)})
            start += dim
    discrete = run.vae.classes
    if discrete:  # q(y|x) per example, beside the draws of z
        class_probs = class_probabilities(run.vae, x)
        groups["posterior"]["q_y"] = (("obs", "y"), class_probs)
        groups["posterior"] = groups["posterior"].assign_coords(y=np.arange(discrete))
    idata = arviz_compat.to_data(groups)
    folder = output_folder(Path(path) / FOLDER)
    # uncompressed size and a margin for HDF5's own structures
    check_room(folder / "posterior.nc", sum(group.nbytes for group in groups.values()) + 2**20)
    with atomic_path(folder / "posterior.nc") as tmp:
        arviz_compat.write_netcdf(idata, tmp)

    stats = idata.sample_stats
    khat = stats["pareto_k"].values
    draws_z = idata.posterior["z"].values[0]  # (draws, n, latent)
    # E_q[z|x_n] as evaluate takes it: exact where q has a mean, else from all S draws
    moments = posterior.moments
    covariance, _ = posterior_mean_covariance(moments.mean, moments.mc_variance)
    means = moments.mean.cpu().numpy()
    spread = means.std(0)
    order = np.argsort(-covariance.cpu().numpy())
    top = [int(d) for d in order[: min(4, run.vae.latent_dim)]]
    pair = top[:2] if len(top) >= 2 else [top[0], top[0]]
    examples = _chosen_examples(khat)
    summary = arviz_compat.summary(idata, var_names=["z"], coords={"obs": examples, "latent": top})
    psis_ll = _psis_loglik(stats)
    diagnostics = {
        "split": split,
        "data": source,
        "n": len(x),
        "samples": num_samples,
        "draws_stored": int(draws_z.shape[0]),
        "khat_bands": khat_bands(khat),
        "khat_max": float(khat.max()),
        "psis_log_likelihood": psis_ll["psis"],
        "units": run.units,
        "is_log_likelihood": psis_ll["is"],
        **active_unit_summary(moments.mean, moments.mc_variance, run.vae.layer_dims),
        "most_active_dimensions": top,
        "latent_summary": {"examples": examples, "interval": arviz_compat.INTERVAL_LABEL,
                           "table": summary.rename_axis("variable").reset_index().to_dict("records")},
        "note": "k-hat and PSIS log p(x) diagnose q(z|x) as an importance-sampling proposal per example "
                "(Yao et al., 2018); they are not leave-one-out cross-validation",
    }

    figures = {"khat": khat_plot(folder / "khat.png", idata)}
    names = run.vae.latent_labels
    label_values = None if labels is None else labels.cpu().numpy()
    figures["latent_space"] = latent_space(folder / "latent_space.png", means, label_values, pair, names=names)
    layer_tops = _most_active_by_layer(run.vae, covariance.cpu().numpy()) if run.vae.layers > 1 else {}
    for name, dims in layer_tops.items():  # each stochastic layer's own two most active dimensions
        figures[f"latent_space_layer_{name}"] = latent_space(folder / f"latent_space_layer_{name}.png", means, label_values,
                                                      dims[:2] if len(dims) > 1 else dims * 2, names=names, layer=name)
    if discrete:
        predicted = class_probs.argmax(-1)
        figures["latent_space_predicted"] = latent_space(folder / "latent_space_predicted.png", means, predicted, pair,
                                                         "argmax q(y|x)", names=names)
        figures["class_samples"] = class_samples(folder / "class_samples.png", run.vae)
        if labels is not None:
            scores = classification_summary(torch.as_tensor(class_probs), labels)
            diagnostics.update({k: scores[k] for k in ("accuracy", "cluster_accuracy", "nmi", "confusion")})
            figures["confusion"] = confusion_matrix(folder / "confusion.png", np.asarray(scores["confusion"]),
                                                    examples_label_names)
    atomic_write_json(folder / "diagnostics.json", diagnostics)
    if c is not None:
        figures.update(covariate_figures(folder, run, means, c, pair, seed))
    with torch.no_grad(), given(run.vae, None if c is None else c[examples]):
        gaussian = gaussian_moments(run.vae.q(x[examples]))
    figures["posterior"], figures["pair"] = example_posteriors(folder / "posterior_examples.png", folder / "pair_examples.png",
                                                               idata, examples, top[:2] if len(top) > 1 else top, gaussian,
                                                               names)
    metrics = run.metrics
    figures["elbo"] = elbo_curves(folder / "elbo.png", metrics)
    vae = run.vae
    with given(vae, None if c is None else c[:16]):
        reconstructions = vae.reconstruct(x[:16])
    with given(vae, run.coding.draw(32, seed=seed).to(x.device) if c is not None else None):
        samples = vae.sample(32)[1]
    look = Look.of(vae, run.summary.get("data", {}).get("feature_names")).spanning(x[:16], reconstructions, samples)  # one colour scale for the figures of the data
    figures["reconstructions"] = reconstruction_panel(folder / "reconstructions.png", x[:16], reconstructions, split, look)
    figures["samples"] = image_panel(folder / "samples.png",
                                     [("E[x|z], z ~ p(z)", samples, [f"sample {i}" for i in range(32)])],
                                     look, "Decoded samples from the prior")
    means_t = torch.as_tensor(means, device=x.device, dtype=x.dtype)
    a, b = _distinct_pair(labels, len(x))
    with given(vae, None if c is None else c[a : a + 1]):  # decoded under the first example's covariates
        figures["interpolation"] = interpolation(folder / "interpolation.png", vae, means_t[a], means_t[b], x[a], x[b],
                                                 (a, b), look)
        spread_t = torch.as_tensor(spread, device=x.device, dtype=x.dtype).clamp_min(1e-3)
        figures["traversals"] = traversals(folder / "traversals.png", vae, means_t.mean(0), top, spread_t, look)
        for name, dims in layer_tops.items():
            figures[f"traversals_layer_{name}"] = traversals(folder / f"traversals_layer_{name}.png", vae, means_t.mean(0),
                                                             dims, spread_t, look, layer=name)
    atomic_write_text(folder / "report.md", _report(run, diagnostics, figures, folder, (a, b)))
    record_outputs(path, [folder / "posterior.nc", folder / "diagnostics.json", folder / "report.md", *figures.values()])
    return {"diagnostics": diagnostics, "figures": figures, "folder": folder}


def _per_layer(figures: dict, rel, kind: str, what: str) -> str:
    """The report's lines for the per-layer figures of ``kind`` (none with one layer)."""
    prefix = f"{kind}_layer_"
    lines = [f"![{what} {key[len(prefix):]}]({rel(path)})\n\n" for key, path in figures.items() if key.startswith(prefix)]
    return "".join(lines)


def _most_active_by_layer(vae, covariance: np.ndarray, count: int = 4) -> dict[str, list[int]]:
    """Each stochastic layer's ``count`` most active coordinates of the latent vector (by the
    variance of the posterior means over examples), by the layer's site name."""
    tops, start = {}, 0
    for name, dim in zip(vae.site_names, vae.layer_dims):
        order = np.argsort(-covariance[start : start + dim])
        tops[name] = [start + int(d) for d in order[: min(count, dim)]]
        start += dim
    return tops


def covariate_figures(folder: Path, run, means: np.ndarray, c: torch.Tensor, pair, seed: int, per_category: int = 8,
                      most: int = 12) -> dict:
    """Per categorical covariate NAME: ``latent_space_NAME.png`` (the posterior means coloured
    by it) and ``samples_by_NAME.png`` (decoded samples, one row per category, at most
    ``most``, the other covariates drawn from the training rows): what the covariate does
    to z, and what it does to x."""
    figures, coding, vae = {}, run.coding, run.vae
    look = Look.of(vae, run.summary.get("data", {}).get("feature_names"))
    for column, covariate in enumerate(coding.covariates):
        if covariate.kind != "categorical":
            continue
        name = covariate.name
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        figures[f"latent_space_{safe}"] = latent_space(folder / f"latent_space_{safe}.png", means,
                                                       c[:, column].round().long().cpu().numpy(), pair, name)
        categories = covariate.categories[:most]
        rows = torch.cat([coding.draw(per_category, {column: float(k)}, seed + k) for k in range(len(categories))])
        with given(vae, rows.to(c.device)):
            _, decoded = vae.sample(len(rows))
        names = [f"{name} = {v}" for v in categories]
        if look.image_shape is not None:
            panels = [(names[k], decoded[k * per_category : (k + 1) * per_category]) for k in range(len(categories))]
        else:
            panels = [("E[x|z, c], z ~ p(z|c)", decoded, [f"{names[k]}, sample {i}" for k in range(len(categories))
                                                          for i in range(per_category)])]
        figures[f"samples_by_{safe}"] = image_panel(folder / f"samples_by_{safe}.png", panels, look.spanning(decoded),
                                                    f"Samples per value of {name}", columns=per_category)
    return figures


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


def _chosen_examples(khat: np.ndarray) -> list[int]:
    """Three examples: the best, the median and the worst k-hat."""
    order = np.argsort(khat)
    picks = [int(order[0]), int(order[len(order) // 2]), int(order[-1])]
    return list(dict.fromkeys(picks))


def _distinct_pair(labels, n: int) -> tuple[int, int]:
    """Two examples to interpolate between: of different labels when there are labels."""
    if labels is not None:
        values = labels.cpu().numpy()
        for j in range(1, n):
            if values[j] != values[0]:
                return 0, j
    return 0, min(1, n - 1)


def _psis_loglik(stats) -> dict:
    """Dataset means (+- SE over examples) of the PSIS and plain IS estimates of log p(x)."""
    return {
        kind: {"mean": float(values.mean()), "se": standard_error(values)}
        for kind, values in (("psis", stats["psis_log_likelihood"].values), ("is", stats["is_log_likelihood"].values))
    }


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


def _report(run, diagnostics: dict, figures: dict, folder: Path, pair) -> str:
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
from q(z|x) per example ({diagnostics['draws_stored']} stored in `posterior.nc`). Log-likelihoods are in
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
