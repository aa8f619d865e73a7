"""Analysis figures of a trained run: PSIS k-hat, the latent space, posteriors of single
examples, interpolations and traversals. Axes carry units, titles say what is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .figures import Look, image_panel, new_figure, save_figure
from .inference_data import BANDS, arviz, quiet_arviz


def khat_plot(path: Path, idata) -> Path:
    """az.plot_khat of the per-example k-hat, with the 0.5 and 0.7 thresholds drawn."""
    az = arviz()
    khat = idata.sample_stats["pareto_k"]
    fig = new_figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    with quiet_arviz():
        az.plot_khat(khat, ax=ax, markersize=8)
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
                 label: str = "label") -> Path:
    """Posterior means on the two most active latent dimensions, coloured by ``labels`` (named ``label``)."""
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
    ax.set_xlabel(f"z[{a}], posterior mean E_q[z|x]")
    ax.set_ylabel(f"z[{b}], posterior mean E_q[z|x]")
    ax.set_title("Latent space: the two most active dimensions" + (f", coloured by {label}" if labels is not None else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def example_posteriors(path_posterior: Path, path_pair: Path, idata, examples: Sequence[int], dims: Sequence[int]) -> list[Path]:
    """az.plot_posterior (marginals of the most active dimensions) and az.plot_pair (their
    joint) of q(z|x) for a few examples."""
    az = arviz()
    fig = new_figure(figsize=(3.0 * len(dims), 2.4 * len(examples)))
    axes = fig.subplots(len(examples), len(dims), squeeze=False)
    with quiet_arviz():
        for row, n in enumerate(examples):
            az.plot_posterior(idata, var_names=["z"], coords={"obs": [n], "latent": list(dims)}, ax=axes[row],
                              hdi_prob=0.9, textsize=8)
            for col, d in enumerate(dims):
                axes[row, col].set_title(f"example {n}: z[{d}]", fontsize=9)
                axes[row, col].set_xlabel("z (latent units)", fontsize=8)
    fig.suptitle("Posterior q(z|x) of single examples: marginals with 90% HDI", fontsize=11)
    fig.tight_layout()
    paths = [save_figure(fig, path_posterior)]
    fig = new_figure(figsize=(3.2 * len(examples), 3.2))
    axes = fig.subplots(1, len(examples), squeeze=False)[0]
    with quiet_arviz():
        for ax, n in zip(axes, examples):
            az.plot_pair(idata, var_names=["z"], coords={"obs": [n], "latent": list(dims[:2])}, kind="kde", ax=ax,
                         textsize=8)
            ax.set_title(f"example {n}", fontsize=9)
            ax.set_xlabel(f"z[{dims[0]}]")
            ax.set_ylabel(f"z[{dims[1]}]")
    fig.suptitle("Joint posterior q(z|x) of two latent dimensions, single examples", fontsize=11)
    fig.tight_layout()
    paths.append(save_figure(fig, path_pair))
    return paths


@torch.no_grad()
def interpolation(path: Path, vae, mean_a: torch.Tensor, mean_b: torch.Tensor, steps: int = 10) -> Path:
    """E[x|z] along the line from one example's posterior mean to another's."""
    t = torch.linspace(0, 1, steps, device=mean_a.device)[:, None]
    decoded = vae.decode_mean((1 - t) * mean_a + t * mean_b)
    rows = [f"t = {v:.2f}" for v in t[:, 0].tolist()]
    return image_panel(path, [("E[x|z] for z = (1 - t) m_a + t m_b, t = 0 .. 1 (left to right; rows of a table: "
                               "top to bottom)", decoded, rows)],
                       Look.of(vae), "Linear interpolation between two encoded examples", columns=steps)


@torch.no_grad()
def traversals(path: Path, vae, centre: torch.Tensor, dims: Sequence[int], spread: torch.Tensor, steps: int = 9) -> Path:
    """E[x|z] as one latent dimension at a time moves through +-2.5 posterior-mean SDs."""
    offsets = torch.linspace(-2.5, 2.5, steps, device=centre.device)
    rows = []
    for d in dims:
        z = centre.repeat(steps, 1)
        z[:, d] = centre[d] + offsets * spread[d]
        names = [f"z[{d}] = {v:.2f}" for v in z[:, d].tolist()]
        rows.append((f"z[{d}] from {(centre[d] - 2.5 * spread[d]).item():.2f} to {(centre[d] + 2.5 * spread[d]).item():.2f}",
                     vae.decode_mean(z), names))
    return image_panel(path, rows, Look.of(vae), "Traversals of the most active latent dimensions "
                       "(others at the mean posterior mean)", columns=steps)
