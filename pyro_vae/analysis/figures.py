"""Figures for people: labelled axes with units, titles that say what is shown,
images at their natural aspect. Built on matplotlib's object API (no global backend
is set) and saved atomically."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..model.condition import given

from ..model.networks import image_shape
from ..files import atomic_write

DPI = 120


def new_figure(**kwargs):
    """A matplotlib Figure (no pyplot, no global state). matplotlib is imported on first
    use: the CLI starts without it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def ticker():
    """matplotlib.ticker, imported on first use (as :func:`new_figure`)."""
    import matplotlib.ticker

    return matplotlib.ticker


def save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


@dataclass(frozen=True)
class Look:
    """How a run's examples are drawn: as images (grayscale or colour) when the data shape
    is an image's ((C, H, W), (H, W), or a flat square of at least 8 x 8) and the values are
    not counts, else as heat maps of examples x features. Colours span the likelihood's
    support where it is bounded ([0, 1], 8-bit levels), else a robust range of the values
    shown (their 1st to 99th percentile), with a colour bar."""

    data_shape: tuple[int, ...]
    bounds: tuple[Optional[float], Optional[float]] = (None, None)
    counts: bool = False
    fixed: Optional[tuple[float, float]] = None  # one colour range for several figures (see ``spanning``)
    feature_names: Optional[tuple[str, ...]] = None  # a CSV header's: the heat maps' feature axis

    @classmethod
    def of(cls, vae, feature_names: Optional[Sequence[str]] = None) -> "Look":
        likelihood = vae.likelihood
        return cls(tuple(vae.data_shape), tuple(likelihood.domain_bounds), bool(getattr(likelihood, "raw_integers", False))
                   and likelihood.domain_bounds[1] is None, feature_names=tuple(feature_names) if feature_names else None)

    @property
    def image_shape(self) -> Optional[tuple[int, int, int]]:
        shape = image_shape(self.data_shape)
        if self.counts or shape is None or shape[0] not in (1, 3):
            return None
        if len(self.data_shape) == 1 and self.data_shape[0] < 64:  # a few features are a table, not an image
            return None
        return shape

    @property
    def bounded(self) -> bool:
        return self.bounds[0] is not None and self.bounds[1] is not None

    def spanning(self, *arrays) -> "Look":
        """This look with one colour range for all ``arrays`` (a run's inputs, reconstructions
        and samples: figures of the same data on the same scale): the support where it is
        bounded, else the 1st to 99th percentile of all their values together."""
        if self.bounded:
            return self
        values = np.concatenate([np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float32).reshape(-1) for a in arrays])
        return replace(self, fixed=self.value_range(values))

    def value_range(self, x: np.ndarray) -> tuple[float, float]:
        low, high = self.bounds
        if low is not None and high is not None:
            return float(low), float(high)
        if self.fixed is not None:
            return self.fixed
        finite = x[np.isfinite(x)]
        if not len(finite):
            return 0.0, 1.0
        low, high = (float(v) for v in np.percentile(finite, [1, 99]))
        if high <= low:
            low, high = float(finite.min()), float(finite.max())
        return (low, high) if high > low else (low - 0.5, low + 0.5)


def as_images(x: torch.Tensor | np.ndarray, look: Look) -> Optional[np.ndarray]:
    """(n, H, W) or (n, H, W, 3) images for image-like data, else None."""
    shape = look.image_shape
    if shape is None:
        return None
    x = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float32).reshape(-1, *shape)
    return x[:, 0] if shape[0] == 1 else np.moveaxis(x, 1, -1)


def tile(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """Images (n, H, W[, 3]) tiled row by row into one array, separated by NaN gaps."""
    n = len(images)
    rows = math.ceil(n / columns)
    h, w = images.shape[1:3]
    canvas = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, *images.shape[3:]), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    return canvas


def _show_images(ax, images: np.ndarray, columns: int, vrange):
    vmin, vmax = vrange
    shown = tile(images, columns)
    if shown.ndim == 3:  # colour
        shown = np.nan_to_num((shown - vmin) / (vmax - vmin), nan=1.0).clip(0, 1)
        mappable = ax.imshow(shown, interpolation="nearest")
    else:
        mappable = ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return mappable


def _show_table(ax, x: np.ndarray, vrange, rows: Sequence[str], features: Optional[Sequence[str]] = None):
    """Examples x features as a heat map, one named row per example; the features named
    (a CSV header's names, up to 40 of them shown) or else numbered."""
    flat = x.reshape(len(x), -1)
    mappable = ax.imshow(flat, aspect="auto", cmap="viridis", vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
    if features is not None and len(features) == flat.shape[1]:
        every = max(1, math.ceil(len(features) / 40))
        ax.set_xticks(range(0, len(features), every), [features[j] for j in range(0, len(features), every)],
                      rotation=90, fontsize=6)
        ax.set_xlabel("feature", fontsize=8)
    else:
        ax.xaxis.set_major_locator(ticker().MaxNLocator(nbins=10, integer=True))
        ax.set_xlabel("feature (column index)", fontsize=8)
    step = max(1, math.ceil(len(flat) / 12))
    ax.set_yticks(range(0, len(flat), step), [rows[i] for i in range(0, len(flat), step)], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    return mappable


def image_panel(path: Path, panels: Sequence[tuple], look: Look, title: str, columns: int = 8) -> Path:
    """Labelled grids of examples, stacked vertically, sharing one colour range. Each panel is
    (title, array) or (title, array, row names) -- the row names label heat-map rows of
    non-image data (default 'example 0', 'example 1', ...)."""
    arrays = [np.asarray(torch.as_tensor(panel[1]).detach().cpu(), dtype=np.float32) for panel in panels]
    vrange = look.value_range(np.concatenate([a.reshape(-1) for a in arrays]))
    bounded = look.bounded
    value = "count" if look.counts else "value"
    if look.image_shape is not None:
        h, w = look.image_shape[1:]
        cell = min(1.0, 9.0 / columns)  # inches per image: the grid fills the figure, no empty band
        grid_rows = [math.ceil(len(a) / columns) for a in arrays]
        heights = [r * cell * h / w + 0.3 for r in grid_rows]
        fig = new_figure(figsize=(columns * cell + (1.2 if not bounded else 0.3), sum(heights) + 0.5), layout="constrained")
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, panel, x in zip(axes, panels, arrays):
            mappable = _show_images(ax, as_images(x, look), columns, vrange)
            ax.set_title(panel[0], fontsize=9)
    else:
        heights = [max(1.2, min(0.12 * len(a) + 0.8, 7.0)) for a in arrays]
        fig = new_figure(figsize=(8.0, sum(heights) + 0.6), layout="constrained")
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, panel, x in zip(axes, panels, arrays):
            names = panel[2] if len(panel) > 2 else [f"example {i}" for i in range(len(x))]
            mappable = _show_table(ax, x, vrange, names, look.feature_names)
            ax.set_title(panel[0], fontsize=9)
    if not bounded or look.image_shape is None:
        note = "" if bounded else " (1st-99th percentile; beyond it clipped)"
        height = fig.get_size_inches()[1]
        # a short figure (one row of images) has its colour bar underneath, where the label fits
        fig.colorbar(mappable, ax=list(axes), label=value + note, shrink=0.9,
                     **({"orientation": "horizontal", "aspect": 40} if height < 3.5 else {}))
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def robust_limits(ax, series: Sequence[Sequence[float]]) -> None:
    """Y limits that show the progress of curves whose first values are far off (an ELBO of
    -7000 after one epoch and -35 later): when the first tenth of the epochs spans more
    than 3x the range of the rest, the limits are the rest's, and what falls outside is
    noted on the axes."""
    values = np.concatenate([np.asarray(s, dtype=float) for s in series if len(s)]) if series else np.array([])
    tails = [np.asarray(s[max(1, math.ceil(0.1 * len(s))):], dtype=float) for s in series if len(s) > 2]
    if not tails:
        return
    tail = np.concatenate(tails)
    tail, values = tail[np.isfinite(tail)], values[np.isfinite(values)]
    if not len(tail):
        return
    low, high = tail.min(), tail.max()
    span = max(high - low, 1e-9 * max(1.0, abs(high)))
    if values.max() - values.min() <= 3 * span:
        return
    low, high = low - 0.15 * span, high + 0.15 * span
    outside = values[(values < low) | (values > high)]
    ax.set_ylim(low, high)
    ax.text(0.01, 0.02, f"{len(outside)} early value(s) off the scale (down to {outside.min():.4g})",
            transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")


def epoch_ticks(ax, epochs: int) -> None:
    """Whole epochs on the x axis: each one when there are few (one epoch included)."""
    if epochs <= 10:
        ax.set_xticks(range(1, epochs + 1))
        ax.set_xlim(0.5, epochs + 0.5)
    else:
        ax.xaxis.set_major_locator(ticker().MaxNLocator(integer=True))


def elbo_curves(path: Path, metrics: Sequence[dict]) -> Path:
    """Train and validation ELBO per epoch (markers, so one epoch shows), with robust limits."""
    fig = new_figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    epochs = [row["epoch"] for row in metrics]
    train = [row["train_elbo"] for row in metrics]
    valid = [row["val_elbo"] for row in metrics]
    ax.plot(epochs, train, marker=".", label="train (objective, beta-weighted)")
    ax.plot(epochs, valid, marker=".", label="validation (beta = 1)")
    robust_limits(ax, [train, valid])
    epoch_ticks(ax, len(epochs))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("ELBO during training (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def training_figures(folder: Path, vae, x_valid: torch.Tensor, metrics: Sequence[dict], num_samples: int = 64,
                     feature_names: Optional[Sequence[str]] = None, condition=None) -> list[Path]:
    """elbo.png, reconstructions.png and samples.png for a trained VAE (``feature_names``:
    the data's, where it names them). A model with covariates: ``condition`` is (c of the
    validation examples, c of the samples)."""
    folder = Path(folder)
    inputs = x_valid[:16]
    c_valid, c_samples = condition or (None, None)
    with given(vae, None if c_valid is None else c_valid[:16]):
        reconstructions = vae.reconstruct(inputs)
    with given(vae, c_samples):
        _, samples = vae.sample(num_samples)
    look = Look.of(vae, feature_names).spanning(inputs, reconstructions, samples)
    return [
        elbo_curves(folder / "elbo.png", metrics),
        reconstruction_panel(folder / "reconstructions.png", inputs, reconstructions, "validation", look),
        image_panel(folder / "samples.png", [("E[x|z], z ~ p(z)", samples, [f"sample {i}" for i in range(len(samples))])],
                    look, "Decoded samples from the prior"),
    ]


def reconstruction_panel(path: Path, inputs: torch.Tensor, reconstructions: torch.Tensor, split: str, look: Look) -> Path:
    """Inputs above their reconstructions E[x|z], z ~ q(z|x), row for row."""
    names = [f"{split} example {i}" for i in range(len(inputs))]
    return image_panel(path, [(f"{split} inputs x", inputs, names),
                              ("reconstructions E[x|z], z ~ q(z|x)", reconstructions, names)],
                       look, f"{split.capitalize()} inputs and their reconstructions")
