"""Analysis figures of a trained run: PSIS k-hat, the latent space, posteriors of single
examples, interpolations and traversals. Axes carry units, titles say what is shown."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np
import torch

from .figures import Look, image_panel, new_figure, save_figure
from . import arviz_compat
from .inference_data import BANDS


def khat_plot(path: Path, idata) -> Path:
    """The per-example k-hat against the example's index, with the 0.5 and 0.7 thresholds
    drawn (matplotlib alone: the same figure on ArviZ 0.x and 1.x, whose plot_khat differ)."""
    khat = idata.sample_stats["pareto_k"]
    fig = new_figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    ax.scatter(np.arange(khat.size), khat.values, s=8, marker="+", color="C0")
    for (name, lo, _), color in zip(BANDS[1:], ("C1", "C3")):
        ax.axhline(lo, color=color, ls="--", lw=1, label=f"k = {lo}: {'usable' if lo == 0.5 else 'unreliable'} above")
    values = khat.values
    counts = {name: int(((values >= lo) & (values < hi)).sum()) for name, lo, hi in BANDS}
    ax.set_xlabel("example (index in the analyzed split)")
    ax.set_ylabel("Pareto shape k-hat")
    ax.set_title(f"PSIS k-hat of q(z|x) as a proposal, {idata.sample_stats.attrs['num_samples']} draws per example\n"
                 f"good {counts['good']}, usable {counts['ok']}, unreliable {counts['bad']} of {len(values)}")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def latent_space(path: Path, means: np.ndarray, labels: Optional[np.ndarray], dims: Sequence[int],
                 label: str = "label", names: Optional[Sequence[str]] = None, layer: str = "") -> Path:
    """Posterior means on the two most active latent dimensions, coloured by ``labels`` (named
    ``label``); ``names`` the latent coordinates' names (``z[d]`` by default), ``layer`` the
    stochastic layer the two dimensions belong to, for the title."""
    names = names or [f"z[{d}]" for d in range(means.shape[1])]
    fig = new_figure(figsize=(5.6, 5.0))
    ax = fig.subplots()
    a, b = dims
    if labels is not None:
        classes = np.unique(labels)
        cmap = "tab10" if len(classes) <= 10 else "viridis"
        points = ax.scatter(means[:, a], means[:, b], c=labels, cmap=cmap, s=10, alpha=0.8)
        if len(classes) <= 10:
            ax.legend(*points.legend_elements(), title=label, fontsize=7, title_fontsize=8, loc="best")
        else:
            fig.colorbar(points, ax=ax, label=label)
    else:
        ax.scatter(means[:, a], means[:, b], s=10, alpha=0.6)
    ax.set_xlabel(f"{names[a]}, posterior mean E_q[z|x]")
    ax.set_ylabel(f"{names[b]}, posterior mean E_q[z|x]")
    ax.set_title("Latent space: the two most active dimensions" + (f" of {layer}" if layer else "")
                 + (f", coloured by {label}" if labels is not None else ""), fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def gaussian_moments(q) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(means (n, D), covariances (n, D, D)) of a Gaussian q(z|x) (diagonal, low-rank or full
    normal), None for any other (a flow, a mixture over y): its figures then show draws."""
    import torch.distributions as td

    base = q.base_dist if isinstance(q, td.Independent) and q.reinterpreted_batch_ndims == 1 else None
    if isinstance(q, (td.MultivariateNormal, td.LowRankMultivariateNormal)):
        covariance = q.covariance_matrix
    elif isinstance(base, td.Normal):
        covariance = torch.diag_embed(base.variance)
    else:
        return None
    return q.mean.detach().cpu().double().numpy(), covariance.detach().cpu().double().numpy()


MAHALANOBIS = (1.0, 2.0, 3.0)  # a 2-D Gaussian holds 1 - exp(-r^2 / 2) of its mass within r: 39%, 86%, 99%
# the standard normal's (1 + INTERVAL)/2 quantile (1.645 for 90%): mean +- Z_HDI sd is the HDI of a normal
Z_HDI = NormalDist().inv_cdf((1 + arviz_compat.INTERVAL) / 2)


def example_posteriors(path_posterior: Path, path_pair: Path, idata, examples: Sequence[int], dims: Sequence[int],
                       gaussian: Optional[tuple[np.ndarray, np.ndarray]] = None,
                       names: Optional[Sequence[str]] = None) -> list[Path]:
    """The posterior q(z|x) of a few examples on the most active dimensions: marginals
    (a histogram of the stored draws; for a Gaussian q its exact density and 90% HDI, mean +-
    1.645 sd, else ArviZ's 90% HDI of the draws, ``arviz_compat.INTERVAL``) and the joint of two dimensions (the draws; for
    a Gaussian q its exact contours at Mahalanobis distance 1, 2, 3, else a kernel density
    estimate). ``gaussian``: (means, covariances) of q for ``examples``, row for row;
    ``names`` the latent coordinates' names (``z[d]`` by default)."""
    label = arviz_compat.INTERVAL_LABEL
    draws = idata.posterior["z"].values[0]  # (draws, obs, latent)
    names = names or [f"z[{d}]" for d in range(draws.shape[-1])]
    fig = new_figure(figsize=(3.0 * len(dims), 2.3 * len(examples) + 0.6), layout="constrained")
    axes = fig.subplots(len(examples), len(dims), squeeze=False)
    for row, n in enumerate(examples):
        for col, d in enumerate(dims):
            ax, values = axes[row, col], draws[:, n, d]
            ax.hist(values, bins=30, density=True, color="C0", alpha=0.35, label=f"{len(values)} draws from q(z|x)")
            if gaussian is not None:
                mean, sd = gaussian[0][row, d], np.sqrt(gaussian[1][row, d, d])
                low, high = mean - Z_HDI * sd, mean + Z_HDI * sd
                grid = np.linspace(min(values.min(), mean - 4 * sd), max(values.max(), mean + 4 * sd), 200)
                ax.plot(grid, np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), color="C0",
                        label="q(z|x), exact density")
            else:
                mean = float(values.mean())
                low, high = arviz_compat.hdi(values)
            ax.axvspan(low, high, color="C1", alpha=0.15, label=f"{label} of q(z|x)" if gaussian is not None else f"{label} of the draws")
            ax.axvline(mean, color="k", lw=1, ls=":", label="mean")
            ax.set_title(f"example {n}: {names[d]}\nmean {mean:.2f}, {label} [{low:.2f}, {high:.2f}]", fontsize=8)
            ax.set_xlabel("z (latent units)", fontsize=8)
            ax.set_yticks([])
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(f"Posterior q(z|x) of single examples: marginals with {label}", fontsize=11)
    paths = [save_figure(fig, path_posterior)]

    a, b = dims[:2] if len(dims) > 1 else (dims[0], dims[0])
    fig = new_figure(figsize=(3.4 * len(examples), 3.7), layout="constrained")
    axes = fig.subplots(1, len(examples), squeeze=False)[0]
    for j, (ax, n) in enumerate(zip(axes, examples)):
        ax.scatter(draws[:, n, a], draws[:, n, b], s=5, color="0.45", alpha=0.5, label=f"{len(draws)} draws from q(z|x)")
        if gaussian is not None:
            mean = gaussian[0][j, [a, b]]
            root = np.linalg.cholesky(gaussian[1][j][np.ix_([a, b], [a, b])])
            circle = np.stack([np.cos(np.linspace(0, 2 * np.pi, 200)), np.sin(np.linspace(0, 2 * np.pi, 200))])
            for r, color in zip(MAHALANOBIS, ("C3", "C1", "C0")):
                ring = mean[:, None] + r * root @ circle
                ax.plot(*ring, color=color, lw=1.2, label=f"q(z|x): {1 - np.exp(-r * r / 2):.0%} of its mass inside")
            ax.plot(*mean, "k+", ms=9, label="mean")
        else:  # a kernel density estimate's contours, each around as many of the draws as a ring above holds
            from scipy.stats import gaussian_kde

            points = np.stack([draws[:, n, a], draws[:, n, b]])
            kde = gaussian_kde(points)
            low, high = points.min(1), points.max(1)
            low, high = low - 0.3 * (high - low), high + 0.3 * (high - low)  # room for the outer contour to close
            gx, gy = np.meshgrid(np.linspace(low[0], high[0], 100), np.linspace(low[1], high[1], 100))
            density = kde(np.stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
            at_draws = kde(points)
            for r, color in zip(MAHALANOBIS, ("C3", "C1", "C0")):
                share = 1 - np.exp(-r * r / 2)
                ax.contour(gx, gy, density, levels=[np.quantile(at_draws, 1 - share)], colors=color, linewidths=1.2)
                ax.plot([], [], color=color, label=f"kernel density estimate: {share:.0%} of the draws inside")
        ax.set_title(f"example {n}", fontsize=9)
        ax.set_xlabel(names[a])
        ax.set_ylabel(names[b])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8)
    fig.suptitle("Joint posterior q(z|x) of two latent dimensions, single examples"
                 + (" (Gaussian: exact contours)" if gaussian is not None else ""), fontsize=11)
    paths.append(save_figure(fig, path_pair))
    return paths


@torch.no_grad()
def interpolation(path: Path, vae, mean_a: torch.Tensor, mean_b: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor,
                  names: Sequence = ("a", "b"), look: Optional[Look] = None, steps: int = 10) -> Path:
    """E[x|z] along the line from one example's posterior mean to another's, under the two
    examples themselves (above t = 0 and t = 1 for images, as two rows for a table)."""
    look = look or Look.of(vae)
    t = torch.linspace(0, 1, steps, device=mean_a.device)[:, None]
    decoded = vae.decode_mean((1 - t) * mean_a + t * mean_b)
    rows = [f"t = {v:.2f}" for v in t[:, 0].tolist()]
    a, b = names
    if look.image_shape is not None:  # the originals at the ends of a row of blanks (NaN: not drawn)
        ends = torch.full((steps, *x_a.shape), float("nan"), dtype=decoded.dtype)
        ends[0], ends[-1] = x_a.cpu(), x_b.cpu()
        originals = (f"the two examples: {a} (left, t = 0) and {b} (right, t = 1)", ends, [])
    else:
        originals = ("the two examples", torch.stack([x_a, x_b]), [f"example {a} (t = 0)", f"example {b} (t = 1)"])
    return image_panel(path, [originals, ("E[x|z] for z = (1 - t) m_a + t m_b, m the posterior means, t = 0 .. 1 "
                                          "(left to right; rows of a table: top to bottom)", decoded, rows)],
                       look, f"Linear interpolation between examples {a} and {b}", columns=steps)


@torch.no_grad()
def traversals(path: Path, vae, centre: torch.Tensor, dims: Sequence[int], spread: torch.Tensor,
               look: Optional[Look] = None, steps: int = 9, layer: str = "") -> Path:
    """E[x|z] as one latent dimension at a time moves through +-2.5 posterior-mean SDs; with
    stacked layers, the layers below the moved one follow at their conditional prior means
    (``VAE.descended``), so that moving an upper layer shows what it does to x."""
    offsets = torch.linspace(-2.5, 2.5, steps, device=centre.device)
    rows = []
    for d in dims:
        z = centre.repeat(steps, 1)
        z[:, d] = centre[d] + offsets * spread[d]
        name = vae.latent_labels[d]
        names = [f"{name} = {v:.2f}" for v in z[:, d].tolist()]
        level = int(np.searchsorted(np.cumsum(vae.layer_dims), d, side="right"))  # the layer d belongs to
        rows.append((f"{name} from {(centre[d] - 2.5 * spread[d]).item():.2f} to {(centre[d] + 2.5 * spread[d]).item():.2f}",
                     vae.decode_mean(vae.descended(z, level)), names))
    return image_panel(path, rows, look or Look.of(vae), "Traversals of the most active latent dimensions"
                       + (f" of {layer}" if layer else "") + " (others at the mean posterior mean"
                       + (", the layers below at their conditional prior means)" if vae.layers > 1 else ")"), columns=steps)
