"""``pyro-vae sample``: decoded draws from a run's prior, as a figure and an array file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..analysis.figures import Look, image_panel
from ..errors import DataError
from ..files import atomic_write, output_folder
from ..infer.evaluate import BUDGET
from ..runs import load_run, record_outputs
from .memory import check_samples

SHOWN = 64  # samples drawn in the figure; the array file holds all


def sample_run(path, n: int, seed: int = 0, condition: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write RUN/samples/samples.png (E[x|z] for the first draws z ~ p(z), at most ``SHOWN``)
    and samples.npz (z, mean: all n); returns their paths. Draws are seeded with ``seed``,
    and decoded in chunks of at most ``BUDGET`` output values; n draws that would not fit in
    memory are refused before any is drawn. A model with covariates decodes E[x | z, c] with
    c set by ``condition`` (``NAME=VALUE`` settings, e.g. ``label=7``) and the covariates not
    set drawn from the training rows (:meth:`~pyro_vae.data.covariates.CovariateCoding.draw`); samples.npz also holds c."""
    run = load_run(path)
    features = math.prod(run.vae.data_shape)
    check_samples(n, features, run.vae.latent_dim)
    coding = run.coding
    if condition and not coding:
        raise DataError("{condition}: this run's model has no covariates; leave it out")
    changes = coding.assignments(list(condition), "{condition}") if condition else {}
    folder = output_folder(run.path / "samples")
    torch.manual_seed(seed)
    c = coding.draw(n, changes, seed) if coding else None
    chunk = max(16, BUDGET // features // 16 * 16)  # a multiple of 16: the same draws as one call where n <= chunk
    parts = [run.vae.sample(min(chunk, n - start)) if c is None else
             run.vae.sample(min(chunk, n - start), condition=c[start : start + chunk]) for start in range(0, n, chunk)]
    z, mean = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    del parts
    shown = min(n, SHOWN)
    title = f"{n} decoded samples from the prior (seed {seed})" if n <= SHOWN else \
        f"the first {SHOWN} of {n} decoded samples from the prior (seed {seed}; all in samples.npz)"
    if condition:
        title += ", " + ", ".join(condition)
    png = image_panel(folder / "samples.png", [("E[x|z], z ~ p(z)", mean[:shown], [f"sample {i}" for i in range(shown)])],
                      Look.of(run.vae, run.summary.get("data", {}).get("feature_names")), title)
    npz = folder / "samples.npz"
    extra = {} if c is None else {"condition": c.numpy(), "covariates": np.array(coding.names)}
    atomic_write(npz, lambda f: np.savez(f, z=z.numpy(), mean=mean.numpy(), **extra))
    record_outputs(run.path, [png, npz])
    return png, npz

