"""``pyro-vae sample``: decoded draws from a run's prior, as a figure and an array file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..analysis.figures import Look, image_panel
from ..files import atomic_write, output_folder
from ..runs import load_run, record_outputs


def sample_run(path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Write RUN/samples/samples.png (E[x|z] for n draws z ~ p(z)) and samples.npz (z, mean);
    returns their paths. Draws are seeded with ``seed``."""
    run = load_run(path)
    torch.manual_seed(seed)
    z, mean = run.vae.sample(n)
    folder = output_folder(run.path / "samples")
    png = image_panel(folder / "samples.png", [("E[x|z], z ~ p(z)", mean, [f"sample {i}" for i in range(n)])],
                      Look.of(run.vae), f"{n} decoded samples from the prior (seed {seed})")
    npz = folder / "samples.npz"
    atomic_write(npz, lambda f: np.savez(f, z=z.numpy(), mean=mean.numpy()))
    record_outputs(run.path, [png, npz])
    return png, npz
