"""Figures of a discrete latent y: class-conditional samples, the confusion matrix of
argmax q(y|x) against labels, and the latent space coloured by predicted y."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .figures import Look, image_panel, new_figure, save_figure


@torch.no_grad()
def class_probabilities(vae, x: torch.Tensor, chunk: int = 4096, condition: Optional[torch.Tensor] = None) -> np.ndarray:
    """q(y|x) per example, (n, classes); with covariates, q(y|x, c) under each example's own
    row of ``condition``."""
    return np.concatenate([
        torch.softmax(vae.q_y_logits(x[i : i + chunk], condition=None if condition is None else condition[i : i + chunk]),
                      -1).cpu().numpy() for i in range(0, len(x), chunk)])


@torch.no_grad()
def class_samples(path: Path, vae, per_class: int = 8) -> Path:
    """E[x|z, y] for z ~ p(z|y) (M2: p(z)), one row per value of y."""
    y = torch.arange(vae.classes, device=vae.class_logits.device).repeat_interleave(per_class)
    _, means = vae.sample_given(y)
    look = Look.of(vae)
    if look.image_shape is not None:
        panels = [(f"y = {c}", means[c * per_class : (c + 1) * per_class]) for c in range(vae.classes)]
        return image_panel(path, panels, look, "Class-conditional samples, one row per value of y", columns=per_class)
    names = [f"y = {c}, sample {i}" for c in range(vae.classes) for i in range(per_class)]
    return image_panel(path, [("E[x|z, y], z ~ p(z|y)", means, names)], look, "Class-conditional samples")


def confusion_matrix(path: Path, confusion: np.ndarray, label_names: Optional[list] = None) -> Path:
    """Counts of (argmax q(y|x), label), with each cell's count written in it."""
    confusion = np.asarray(confusion)
    fig = new_figure(figsize=(1.2 + 0.45 * confusion.shape[1], 1.0 + 0.4 * confusion.shape[0]), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    high = confusion.max() if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > high / 2 else "black")
    ax.set_xticks(range(confusion.shape[1]), label_names if label_names else range(confusion.shape[1]),
                  rotation=45 if label_names else 0, fontsize=7)
    ax.set_yticks(range(confusion.shape[0]), range(confusion.shape[0]), fontsize=7)
    ax.set_xlabel("label")
    ax.set_ylabel("argmax q(y|x)")
    ax.set_title("Confusion matrix (count per cell)", fontsize=10)
    fig.colorbar(image, ax=ax, label="examples", shrink=0.8)
    return save_figure(fig, path)
