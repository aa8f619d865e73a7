"""Figures for people: labelled axes with units, titles that say what is shown,
images at their natural aspect. Built on matplotlib's object API (no global backend
is set) and saved atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..model.networks import image_shape
from ..runs import atomic_write

DPI = 120


def save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def _value_range(x: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255 and hi > 1:
        return 0.0, 255.0
    return lo, hi if hi > lo else lo + 1


def as_images(x: torch.Tensor | np.ndarray, data_shape: Sequence[int]) -> Optional[np.ndarray]:
    """(n, H, W) or (n, H, W, 3) images for image-like data, else None."""
    shape = image_shape(tuple(data_shape))
    if shape is None or shape[0] not in (1, 3):
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


def _show(ax, x: np.ndarray, data_shape, columns: int, vrange) -> None:
    images = as_images(x, data_shape)
    if images is not None:
        vmin, vmax = vrange
        shown = tile(images, columns)
        if shown.ndim == 3:  # colour
            shown = np.nan_to_num((shown - vmin) / (vmax - vmin), nan=1.0).clip(0, 1)
            ax.imshow(shown, interpolation="nearest")
        else:
            ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:  # non-image data: examples x features as a heat map
        flat = x.reshape(len(x), -1)
        im = ax.imshow(flat, aspect="auto", cmap="viridis", vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
        ax.set_xlabel("feature")
        ax.set_ylabel("example")
        ax.figure.colorbar(im, ax=ax, label="value")


def image_panel(path: Path, panels: Sequence[tuple[str, np.ndarray]], data_shape, title: str, columns: int = 8) -> Path:
    """One or more labelled grids of examples, stacked vertically, sharing a value range."""
    arrays = [np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float32) for _, a in panels]
    vrange = _value_range(np.concatenate([a.reshape(-1) for a in arrays]))
    image = as_images(arrays[0][:1], data_shape)
    if image is not None:
        h, w = image.shape[1:3]
        rows = sum(math.ceil(len(a) / columns) for a in arrays)
        fig = Figure(figsize=(min(10, 0.6 + columns * w / 12), 0.9 + rows * h / 12 + 0.35 * len(panels)))
    else:
        fig = Figure(figsize=(8, 2.2 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (label, _), x in zip(axes, panels, arrays):
        _show(ax, x, data_shape, columns, vrange)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def elbo_curves(path: Path, metrics: Sequence[dict]) -> Path:
    """Train and validation ELBO per epoch."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    epochs = [row["epoch"] for row in metrics]
    ax.plot(epochs, [row["train_elbo"] for row in metrics], marker=".", label="train (objective, beta-weighted)")
    ax.plot(epochs, [row["val_elbo"] for row in metrics], marker=".", label="validation (beta = 1)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("ELBO during training (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def training_figures(folder: Path, vae, x_valid: torch.Tensor, metrics: Sequence[dict], num_samples: int = 64) -> list[Path]:
    """elbo.png, reconstructions.png and samples.png for a trained VAE."""
    folder = Path(folder)
    shape = vae.data_shape
    inputs = x_valid[:16]
    _, samples = vae.sample(num_samples)
    return [
        elbo_curves(folder / "elbo.png", metrics),
        image_panel(
            folder / "reconstructions.png",
            [("validation inputs x", inputs), ("reconstructions E[x|z], z ~ q(z|x)", vae.reconstruct(inputs))],
            shape,
            "Inputs and their reconstructions",
        ),
        image_panel(folder / "samples.png", [("E[x|z], z ~ p(z)", samples)], shape, "Decoded samples from the prior"),
    ]
