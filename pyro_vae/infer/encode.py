"""Latent codes of data under a trained q(z|x): per example, the posterior mean and sd,
and optionally S draws (scvi-tools' ``get_latent_representation``, for any posterior).
With a categorical latent y (``model.discrete``) also q(y|x), and z's mean and sd are
those of the marginal sum_y q(y|x) q(z|x, y).

Where q has a closed-form mean and sd (diagonal and low-rank normals) they are used;
otherwise (flows) both are Monte Carlo estimates from ``mc_draws`` draws, and the
result says so. The work goes in chunks of examples, so a streamed split is never held.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..model.condition import given
from .evaluate import closed_form_mean, closed_form_std

CHUNK = 2048  # examples per encoder pass


def encode(vae, x, samples: int = 0, mc_draws: int = 256, seed: int = 0, chunk: int = CHUNK,
           condition: Optional[Tensor] = None, transformed: Optional[Tensor] = None) -> dict[str, np.ndarray]:
    """``mean`` and ``std`` (n, latent), ``samples`` (n, S, latent) when S > 0, and
    ``exact`` (whether mean and sd are closed forms), and ``q_y`` (n, classes) with a
    categorical latent, for the prepared examples ``x`` (a
    tensor or a streamed split). Draws are seeded with ``seed``. With covariates, q(z | x, c)
    for each example's row of ``condition``; ``transformed`` (other rows c'): also
    ``transformed``, E[x | E_q[z], c'] per example (its own library size where the
    likelihood has one), the reconstruction under changed covariates."""
    parts = list(encode_chunks(vae, x, samples, mc_draws, seed, chunk, condition, transformed))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "exact"} if parts else \
        {"mean": np.zeros((0, vae.latent_dim), np.float32), "std": np.zeros((0, vae.latent_dim), np.float32)}
    out["exact"] = np.array(all(bool(p["exact"]) for p in parts))
    return out


def encode_chunks(vae, x, samples: int = 0, mc_draws: int = 256, seed: int = 0, chunk: int = CHUNK,
                  condition: Optional[Tensor] = None, transformed: Optional[Tensor] = None):
    """:func:`encode` chunk by chunk of ``chunk`` examples: yields each chunk's dict, so
    draws can go to a file without all of them being held. The caller's random stream is
    left untouched; consume the chunks without drawing random numbers in between."""
    vae.eval()
    discrete = bool(vae.classes)
    device = x.device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(x), chunk):
            rows = slice(start, start + chunk)
            xb = x[rows]
            with given(vae, None if condition is None else condition[rows]):
                q = vae.q(xb)
            mean, std, exact = closed_form_mean(q), closed_form_std(q), True
            if mean is None or std is None:
                exact = False
                z = q.sample((mc_draws,))
                mean, std = z.mean(0), z.std(0)
            part = {"mean": mean.cpu().numpy(), "std": std.cpu().numpy(), "exact": np.array(exact)}
            if discrete:
                c = None if condition is None else condition[rows]
                part["q_y"] = torch.softmax(vae.q_y_logits(xb, condition=c), -1).cpu().numpy()
            if samples:
                part["samples"] = q.sample((samples,)).transpose(0, 1).cpu().numpy()
            if transformed is not None:
                with given(vae, transformed[rows]):
                    part["transformed"] = vae.decode_mean(mean.to(transformed.device), xb).cpu().numpy()
            yield part
