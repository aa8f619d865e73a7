"""Latent codes of data under a trained q(z|x): per example, the posterior mean and sd,
and optionally S draws (scvi-tools' ``get_latent_representation``, for any posterior).

Where q has a closed-form mean and sd (diagonal and low-rank normals) they are used;
otherwise (flows) both are Monte Carlo estimates from ``mc_draws`` draws, and the
result says so. The work goes in chunks of examples, so a streamed split is never held.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .evaluate import _closed_form_mean

CHUNK = 2048  # examples per encoder pass


def _closed_form_std(q) -> Optional[Tensor]:
    try:
        return q.stddev
    except NotImplementedError:
        try:
            return q.variance.sqrt()
        except NotImplementedError:
            return None


@torch.no_grad()
def encode(vae, x, samples: int = 0, mc_draws: int = 256, seed: int = 0, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """``mean`` and ``std`` (n, latent), ``samples`` (n, S, latent) when S > 0, and
    ``exact`` (whether mean and sd are closed forms) for the prepared examples ``x`` (a
    tensor or a streamed split). Draws are seeded with ``seed``."""
    vae.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    means, stds, draws, exact = [], [], [], True
    try:
        for start in range(0, len(x), chunk):
            q = vae.q(x[start : start + chunk])
            mean, std = _closed_form_mean(q), _closed_form_std(q)
            if mean is None or std is None:
                exact = False
                z = q.sample((mc_draws,))
                mean, std = z.mean(0), z.std(0)
            means.append(mean.cpu())
            stds.append(std.cpu())
            if samples:
                draws.append(q.sample((samples,)).transpose(0, 1).cpu())
    finally:
        torch.set_rng_state(generator_state)
    out = {"mean": torch.cat(means).numpy(), "std": torch.cat(stds).numpy(), "exact": np.array(exact)}
    if samples:
        out["samples"] = torch.cat(draws).numpy()
    return out
