"""``pyro-vae sample``: decoded draws from a run's prior, as a figure and an array file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

import torch

from ..analysis.figures import Look, image_panel
from ..errors import DataError
from ..files import NpzWriter, atomic_path, check_room, output_folder
from ..runs import load_run, record_outputs
from .memory import FLOAT, samples_chunk

SHOWN = 64  # samples drawn in the figure; the array file holds all


class Samples(NamedTuple):
    """What ``sample_run`` wrote: the figure ``png`` and the array file ``npz``."""

    png: Path
    npz: Path


def sample_run(path, n: int, seed: int = 0, condition: Sequence[str] = ()) -> Samples:
    """Write RUN/samples/samples.png (E[x|z] for the first draws z ~ p(z), at most ``SHOWN``)
    and samples.npz (z, mean: all n); returns their paths. Draws are seeded with ``seed``,
    and decoded in chunks (at most ``BUDGET`` output values, and what memory allows) that
    go to the file one by one: the n draws of z are held, the decoded means are not. What
    would not fit (the z in memory, the file on the disk) is refused before any is drawn. A
    model with covariates decodes E[x | z, c] with c set by ``condition`` (``NAME=VALUE``
    settings, e.g. ``label=7``) and the covariates not set drawn from the training rows
    (:meth:`~pyro_vae.data.covariates.CovariateCoding.draw`); samples.npz also holds c."""
    run = load_run(path)
    features, latent = math.prod(run.vae.data_shape), run.vae.latent_dim
    coding = run.coding
    if condition and not coding:
        raise DataError("$condition: this run's model has no covariates; leave it out")
    changes = coding.assignments(list(condition), "$condition") if condition else {}
    chunk = samples_chunk(n, features, latent)  # a multiple of 16: the same draws as one call where n <= chunk
    folder = output_folder(run.path / "samples")
    npz = folder / "samples.npz"
    check_room(npz, FLOAT * n * (features + latent), "$n")
    torch.manual_seed(seed)
    c = coding.draw(n, changes, seed) if coding else None
    zs, shown = [], None
    with atomic_path(npz) as tmp:
        writer = NpzWriter(tmp)
        try:
            write = writer.rows("mean", (n, *run.vae.data_shape))
            for start in range(0, n, chunk):
                z, mean = run.vae.sample(min(chunk, n - start)) if c is None else \
                    run.vae.sample(min(chunk, n - start), condition=c[start : start + chunk])
                write(mean.numpy())
                zs.append(z)
                shown = mean[:SHOWN] if shown is None else shown
            writer.add("z", torch.cat(zs).numpy())
            if c is not None:
                writer.add("condition", c.numpy())
                writer.add("covariates", np.array(coding.names))
        finally:
            writer.close()
    shown = shown[: min(n, SHOWN)]
    title = f"{n} decoded samples from the prior (seed {seed})" if n <= SHOWN else \
        f"the first {SHOWN} of {n} decoded samples from the prior (seed {seed}; all in samples.npz)"
    if condition:
        title += ", " + ", ".join(condition)
    subtitle = "E[x|z, c], z ~ p(z|c)" if c is not None else "E[x|z], z ~ p(z)"
    png = image_panel(folder / "samples.png", [(subtitle, shown, [f"sample {i}" for i in range(len(shown))])],
                      Look.of(run.vae, run.summary.get("data", {}).get("feature_names")), title)
    record_outputs(run.path, [png, npz])
    return Samples(png, npz)
