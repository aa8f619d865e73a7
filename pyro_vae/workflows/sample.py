"""``pyro-vae sample``: decoded draws from a run's prior, as a figure and an array file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..analysis.figures import Look, image_panel
from ..files import atomic_write, output_folder
from ..infer.evaluate import BUDGET
from ..runs import load_run, record_outputs
from .memory import check_samples

SHOWN = 64  # samples drawn in the figure; the array file holds all


def sample_run(path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Write RUN/samples/samples.png (E[x|z] for the first draws z ~ p(z), at most ``SHOWN``)
    and samples.npz (z, mean: all n); returns their paths. Draws are seeded with ``seed``,
    and decoded in chunks of at most ``BUDGET`` output values; n draws that would not fit in
    memory are refused before any is drawn."""
    run = load_run(path)
    features = math.prod(run.vae.data_shape)
    check_samples(n, features, run.vae.latent_dim)
    folder = output_folder(run.path / "samples")
    torch.manual_seed(seed)
    chunk = max(16, BUDGET // features // 16 * 16)  # a multiple of 16: the same draws as one call where n <= chunk
    parts = [run.vae.sample(min(chunk, n - start)) for start in range(0, n, chunk)]
    z, mean = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    del parts
    shown = min(n, SHOWN)
    title = f"{n} decoded samples from the prior (seed {seed})" if n <= SHOWN else \
        f"the first {SHOWN} of {n} decoded samples from the prior (seed {seed}; all in samples.npz)"
    png = image_panel(folder / "samples.png", [("E[x|z], z ~ p(z)", mean[:shown], [f"sample {i}" for i in range(shown)])],
                      Look.of(run.vae, run.summary.get("data", {}).get("feature_names")), title)
    npz = folder / "samples.npz"
    atomic_write(npz, lambda f: np.savez(f, z=z.numpy(), mean=mean.numpy()))
    record_outputs(run.path, [png, npz])
    return png, npz
