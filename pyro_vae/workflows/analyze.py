"""``pyro-vae analyze``: ArviZ data (0.x or 1.x), PSIS diagnostics, figures and a one-page report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..infer.evaluate import BUDGET, proposal_q, proposal_rows
from ..infer.metrics import active_unit_summary, classification_summary, posterior_mean_covariance, standard_error
from .. import distributed
from ..analysis.discrete import class_probabilities, class_samples, confusion_matrix
from ..analysis.figures import Look, elbo_curves, image_panel, reconstruction_panel
from ..analysis import arviz_compat
from ..analysis.inference_data import draws_to_groups, khat_bands, posterior_draws_sharded
from ..analysis.report import analysis_report
from ..analysis.plots import example_posteriors, gaussian_moments, interpolation, khat_plot, latent_space, traversals
from ..files import atomic_path, atomic_write_json, atomic_write_text, check_room, output_folder
from ..devices import resolve_device
from ..model.condition import given
from ..runs import load_run, record_outputs
from .evaluate import heldout

FOLDER = "analysis"


@dataclass
class Analysis:
    """What ``analyze_run`` wrote: ``diagnostics`` (as in diagnostics.json), ``figures``
    (name -> path of each figure) and the ``folder`` (RUN/analysis) that holds them and
    report.md."""

    diagnostics: dict
    figures: dict[str, Path]
    folder: Path

    @property
    def report(self) -> Path:
        return self.folder / "report.md"


@dataclass
class _Latents:
    """What the figures take from the posterior means E_q[z|x_n]: the means (n, latent),
    their spread over examples, Cov_x of each dimension, the most active dimensions (at
    most 4), the two plotted against each other and each layer's most active ones."""

    means: np.ndarray
    spread: np.ndarray
    covariance: np.ndarray
    top: list[int]
    pair: list[int]
    layer_tops: dict[str, list[int]]


def analyze_run(path, data=None, split="valid", num_samples=1000, limit: Optional[int] = 1000, draws: int = 200,
                seed: int = 0, device="auto", budget: int = BUDGET, refine: Optional[int] = None) -> Optional[Analysis]:
    """Write RUN/analysis/: posterior.nc, diagnostics.json, figures and report.md. Under
    several processes the draws are shared among the ranks in seeded blocks and rank 0
    alone writes (the others return None). With ``refine`` steps (None: the run's
    ``model.refine_steps``) the draws, k-hat, log p(x),
    posterior means and the example posteriors' figures are those of q(z|x) refined per
    example (:mod:`pyro_vae.infer.refine`); the reconstructions stay the encoder's."""
    device = resolve_device(device, "$device")
    group = distributed.use_device(device)
    run = load_run(path, device)
    refine = run.spec.model.refine_steps if refine is None else refine
    examples = heldout(run, data, split, limit, seed, device)
    if not isinstance(examples.x, torch.Tensor):  # a streamed split: the analysis holds its examples' draws anyway
        examples.x = examples.x[:]
    run.vae.eval()
    posterior = posterior_draws_sharded(run.vae, examples.x, num_samples, draws, budget, seed, group, examples.condition,
                                        refine)
    if not group.is_main:
        return None
    torch.manual_seed(seed)  # the figures' draws
    idata, groups, class_probs = _inference_data(run.vae, posterior, examples.x, examples.labels, examples.condition)
    folder = output_folder(Path(path) / FOLDER)
    # uncompressed size and a margin for HDF5's own structures
    check_room(folder / "posterior.nc", sum(group.nbytes for group in groups.values()) + 2**20)
    with atomic_path(folder / "posterior.nc") as tmp:
        arviz_compat.write_netcdf(idata, tmp)
    latents = _latents(run.vae, posterior.moments)
    diagnostics = _diagnostics(run, idata, posterior.moments, examples, split, num_samples, latents.top)
    diagnostics["refine"] = refine
    figures = _diagnostic_figures(folder, run, idata, latents, examples, class_probs, diagnostics, seed)
    atomic_write_json(folder / "diagnostics.json", diagnostics)
    refined = (posterior.moments.mean, posterior.moments.std) if refine else None
    pair = _model_figures(folder, run, idata, latents, examples, split, seed, diagnostics, figures, refined)
    atomic_write_text(folder / "report.md", analysis_report(run, diagnostics, figures, folder, pair))
    record_outputs(path, [folder / "posterior.nc", folder / "diagnostics.json", folder / "report.md", *figures.values()])
    return Analysis(diagnostics, figures, folder)


def _inference_data(vae, posterior, x, labels, condition=None) -> tuple:
    """(InferenceData, its groups, q(y|x) per example or None): the draws of z, with one
    variable per stochastic layer beside the whole vector, and q(y|x) with a discrete y
    (q(y|x, c) under each example's covariates ``condition``, where the model reads them)."""
    groups = draws_to_groups(posterior, x, labels)
    if vae.layers > 1:  # one variable per stochastic layer beside the whole vector z
        start = 0
        for name, dim in zip(vae.site_names, vae.layer_dims):
            layer = groups["posterior"]["z"].isel(latent=slice(start, start + dim))
            groups["posterior"][name] = layer.rename(latent=f"latent_{name}").assign_coords({f"latent_{name}": np.arange(dim)})
            start += dim
    class_probs = None
    if vae.classes:  # q(y|x) per example, beside the draws of z
        class_probs = class_probabilities(vae, x, condition=condition)
        groups["posterior"]["q_y"] = (("obs", "y"), class_probs)
        groups["posterior"] = groups["posterior"].assign_coords(y=np.arange(vae.classes))
    return arviz_compat.to_data(groups), groups, class_probs


def _latents(vae, moments) -> _Latents:
    """E_q[z|x_n] as evaluate takes it (exact where q has a mean, else from all S draws) and
    the dimensions the figures show."""
    covariance, _ = posterior_mean_covariance(moments.mean, moments.mc_variance)
    means = moments.mean.cpu().numpy()
    order = np.argsort(-covariance.cpu().numpy())
    top = [int(d) for d in order[: min(4, vae.latent_dim)]]
    pair = top[:2] if len(top) >= 2 else [top[0], top[0]]
    layer_tops = most_active_by_layer(vae, covariance.cpu().numpy()) if vae.layers > 1 else {}
    return _Latents(means, means.std(0), covariance, top, pair, layer_tops)


def _diagnostics(run, idata, moments, examples, split: str, num_samples: int, top: list[int]) -> dict:
    """diagnostics.json: k-hat, IS and PSIS log p(x), active units and the latent summary
    of three examples (the best, median and worst k-hat)."""
    stats = idata.sample_stats
    khat = stats["pareto_k"].values
    chosen = _chosen_examples(khat)
    summary = arviz_compat.summary(idata, var_names=["z"], coords={"obs": chosen, "latent": top})
    psis_ll = _psis_loglik(stats)
    return {
        "split": split,
        "data": examples.source,
        "n": len(examples.x),
        "samples": num_samples,
        "draws_stored": int(idata.posterior["z"].values[0].shape[0]),
        "khat_bands": khat_bands(khat),
        "khat_max": float(khat.max()),
        "psis_log_likelihood": psis_ll["psis"],
        "units": run.units,
        "is_log_likelihood": psis_ll["is"],
        **active_unit_summary(moments.mean, moments.mc_variance, run.vae.layer_dims),
        "most_active_dimensions": top,
        "latent_summary": {"examples": chosen, "interval": arviz_compat.INTERVAL_LABEL,
                           "table": summary.rename_axis("variable").reset_index().to_dict("records")},
        "note": "k-hat and PSIS log p(x) diagnose q(z|x) as an importance-sampling proposal per example "
                "(Yao et al., 2018); they are not leave-one-out cross-validation",
    }


def _diagnostic_figures(folder: Path, run, idata, latents: _Latents, examples, class_probs, diagnostics: dict,
                        seed: int) -> dict:
    """k-hat per example, the latent space (and each layer's), and with a discrete y the
    predicted classes, class-conditional samples and, with labels, the confusion matrix
    (its scores added to ``diagnostics``)."""
    names, means, pair, labels = run.vae.latent_labels, latents.means, latents.pair, examples.labels
    figures = {"khat": khat_plot(folder / "khat.png", idata)}
    label_values = None if labels is None else labels.cpu().numpy()
    figures["latent_space"] = latent_space(folder / "latent_space.png", means, label_values, pair, names=names)
    for name, dims in latents.layer_tops.items():  # each stochastic layer's own two most active dimensions
        figures[f"latent_space_layer_{name}"] = latent_space(folder / f"latent_space_layer_{name}.png", means, label_values,
                                                      dims[:2] if len(dims) > 1 else dims * 2, names=names, layer=name)
    if class_probs is not None:
        predicted = class_probs.argmax(-1)
        figures["latent_space_predicted"] = latent_space(folder / "latent_space_predicted.png", means, predicted, pair,
                                                         "argmax q(y|x)", names=names)
        c = examples.condition  # class-conditional samples under covariates drawn from training's
        with given(run.vae, None if c is None else run.coding.draw(8 * run.vae.classes, seed=seed).to(c.device)):
            figures["class_samples"] = class_samples(folder / "class_samples.png", run.vae)  # 8 per class
        if labels is not None:
            scores = classification_summary(torch.as_tensor(class_probs), labels)
            diagnostics.update({k: scores[k] for k in ("accuracy", "cluster_accuracy", "nmi", "confusion")})
            figures["confusion"] = confusion_matrix(folder / "confusion.png", np.asarray(scores["confusion"]),
                                                    examples.label_names)
    return figures


def _model_figures(folder: Path, run, idata, latents: _Latents, examples, split: str, seed: int, diagnostics: dict,
                   figures: dict, refined=None) -> tuple[int, int]:
    """Added to ``figures``: the covariates', the example posteriors (``refined``: the
    refined proposals' (means, sds) of every example, drawn instead of the encoder's q),
    the ELBO curves and what the model does (reconstructions, samples, interpolation,
    traversals); returns the two examples interpolated between."""
    x, c, vae, top = examples.x, examples.condition, run.vae, latents.top
    if c is not None:
        figures.update(covariate_figures(folder, run, latents.means, c, latents.pair, seed))
    chosen = diagnostics["latent_summary"]["examples"]
    with torch.no_grad(), given(vae, None if c is None else c[chosen]):
        q = vae.q(x[chosen]) if refined is None else proposal_q(proposal_rows(refined, chosen))
        gaussian = gaussian_moments(q)
    figures["posterior"], figures["pair"] = example_posteriors(folder / "posterior_examples.png", folder / "pair_examples.png",
                                                               idata, chosen, top[:2] if len(top) > 1 else top, gaussian,
                                                               vae.latent_labels)
    figures["elbo"] = elbo_curves(folder / "elbo.png", run.metrics)
    with given(vae, None if c is None else c[:16]):
        reconstructions = vae.reconstruct(x[:16])
    with given(vae, run.coding.draw(32, seed=seed).to(x.device) if c is not None else None):
        samples = vae.sample(32)[1]
    look = Look.of(vae, run.summary.get("data", {}).get("feature_names")).spanning(x[:16], reconstructions, samples)  # one colour scale for the figures of the data
    figures["reconstructions"] = reconstruction_panel(folder / "reconstructions.png", x[:16], reconstructions, split, look)
    figures["samples"] = image_panel(folder / "samples.png",
                                     [("E[x|z], z ~ p(z)", samples, [f"sample {i}" for i in range(32)])],
                                     look, "Decoded samples from the prior")
    a, b = _distinct_pair(examples.labels, len(x))
    with given(vae, None if c is None else c[a : a + 1]):  # decoded under the first example's covariates
        _walks(folder, vae, latents, x, (a, b), look, figures)
    return a, b


def _walks(folder: Path, vae, latents: _Latents, x, pair: tuple[int, int], look, figures: dict) -> None:
    """The interpolation between the two examples' posterior means and the traversals of
    the most active dimensions (and each layer's), added to ``figures``."""
    a, b = pair
    means_t = torch.as_tensor(latents.means, device=x.device, dtype=x.dtype)
    figures["interpolation"] = interpolation(folder / "interpolation.png", vae, means_t[a], means_t[b], x[a], x[b],
                                             (a, b), look)
    spread_t = torch.as_tensor(latents.spread, device=x.device, dtype=x.dtype).clamp_min(1e-3)
    figures["traversals"] = traversals(folder / "traversals.png", vae, means_t.mean(0), latents.top, spread_t, look)
    for name, dims in latents.layer_tops.items():
        figures[f"traversals_layer_{name}"] = traversals(folder / f"traversals_layer_{name}.png", vae, means_t.mean(0),
                                                         dims, spread_t, look, layer=name)


def most_active_by_layer(vae, covariance: np.ndarray, count: int = 4) -> dict[str, list[int]]:
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


