"""The amortized posterior as ArviZ data (InferenceData or DataTree), and PSIS diagnostics of q(z|x).

For each example x_n, S draws z_s ~ q(z|x_n) with log importance weights
log w_ns = log p(x_n, z_s) - log q(z_s|x_n). Pareto-smoothed importance sampling
(Vehtari et al., 2024) fits a generalized Pareto distribution to the largest weights;
its shape k-hat says how trustworthy q(z|x_n) is as a proposal for p(z|x_n)
(Yao et al., 2018): k < 0.5 good, 0.5-0.7 usable, > 0.7 unreliable. The PSIS estimate
log p(x_n) ~ log 1/S sum_s w~_ns uses the smoothed weights.

These are per-example diagnostics of an importance sampler, not leave-one-out
cross-validation: with local latents and point-estimated networks, ``az.loo`` on these
values would not be LOO. So log p(x_n|z_s) is stored in ``sample_stats`` (as
``log_likelihood_x``), not in a ``log_likelihood`` group where ``az.loo`` and
``az.waic`` would pick it up by default and print an elpd that means nothing here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import xarray as xr

from .. import distributed
from . import arviz_compat
from ..infer.evaluate import (BUDGET, PosteriorMoments, example_blocks, importance_chunks, proposal_rows,
                              refined_proposals, refined_proposals_sharded)

BANDS = (("good", -math.inf, 0.5), ("ok", 0.5, 0.7), ("bad", 0.7, math.inf))


def psis(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k-hat, PSIS log p(x), plain IS log p(x)) per row of log weights (n, S)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    S = log_weights.shape[-1]
    smoothed, khat = arviz_compat.psislw(log_weights)
    lse = lambda a: np.logaddexp.reduce(a, axis=-1)  # noqa: E731
    return khat, lse(smoothed) - math.log(S), lse(log_weights) - math.log(S)


def khat_bands(khat: np.ndarray) -> dict:
    """Share and count of examples per k-hat band."""
    n = len(khat)
    return {
        name: {"range": f"[{lo}, {hi})", "count": int(((khat >= lo) & (khat < hi)).sum()),
               "share": float(((khat >= lo) & (khat < hi)).mean()) if n else math.nan}
        for name, lo, hi in BANDS
    }


MANY_UNRELIABLE = 0.1  # a share of examples with k-hat >= 0.7 above which the whole run's figures are in doubt


def khat_advice(bands: dict) -> str:
    """What the share of examples with k-hat >= 0.7 means, in words, and, when it is large
    (``MANY_UNRELIABLE`` or more), what to try."""
    bad, n = bands["bad"], sum(band["count"] for band in bands.values())
    if bad["count"] == 0:
        return "No example has k-hat >= 0.7: q(z|x) is a usable importance-sampling proposal for every one."
    said = (f"{bad['share']:.1%} of the examples ({bad['count']} of {n}) have k-hat >= 0.7: for them q(z|x) is a poor "
            "importance-sampling proposal for p(z|x) (a few draws carry almost all the weight), so their log p(x) "
            "estimates, plain IS and PSIS alike, are unreliable (most likely too low).")
    if bad["share"] < MANY_UNRELIABLE:
        return said + " They are few: the means above move little with them."
    return (said + " They are many, so the means above are in doubt too. To try: a proposal refined per example "
            "(--refine 1000: it closes the encoder's amortization gap, often the main cause); more draws (--samples; "
            "it helps only where k-hat is below 1); a richer posterior (--model iaf_posterior or low_rank_posterior, or an "
            "importance-weighted estimator such as --inference iwae_k5, which trains q(z|x) as a proposal); and a "
            "likelihood that fits the data (a density on a few discrete levels, for one, makes p(x|z) too peaked).")


@dataclass
class PosteriorDraws:
    """Draws and per-example diagnostics, as numpy arrays."""

    z: np.ndarray  # (draws, n, latent): the first ``draws`` of the S draws
    log_likelihood: np.ndarray  # (draws, n): log p(x_n | z_s)
    log_weight: np.ndarray  # (draws, n)
    pareto_k: np.ndarray  # (n,), from all S draws
    psis_log_likelihood: np.ndarray  # (n,)
    is_log_likelihood: np.ndarray  # (n,)
    num_samples: int
    moments: PosteriorMoments  # E_q[z|x_n] from all S draws (exact where q has a mean)
    refine: int = 0  # the steps q(z|x) was refined by per example (0: the encoder's own)


@torch.no_grad()
def posterior_draws(vae, x: torch.Tensor, num_samples: int, keep_draws: Optional[int] = None, budget: int = BUDGET,
                    condition: Optional[torch.Tensor] = None, refine: int = 0,
                    proposals: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> PosteriorDraws:
    """S draws per example, streamed in chunks: the PSIS diagnostics use all S, and only
    the first ``keep_draws`` (default: all) are kept, so memory is bounded whatever S is.
    With ``refine`` steps the draws come from q(z|x) refined per example (the semi-amortized
    proposal of :mod:`pyro_vae.infer.refine`; or ``proposals``, refined already), and k-hat
    diagnoses that proposal."""
    n, keep = len(x), num_samples if keep_draws is None else min(keep_draws, num_samples)
    z = np.empty((keep, n, vae.latent_dim), dtype=np.float32)
    log_lik = np.empty((keep, n), dtype=np.float32)
    log_w = np.empty((keep, n), dtype=np.float32)
    khat, psis_ll, is_ll = (np.empty(n) for _ in range(3))
    pending: list[np.ndarray] = []
    current: Optional[slice] = None
    moments = PosteriorMoments(n, vae.latent_dim, num_samples, {"device": x.device, "dtype": x.dtype})

    def finish(rows: slice, pieces: list[np.ndarray]) -> None:
        k, p, i = psis(np.concatenate(pieces, 0).T)
        khat[rows], psis_ll[rows], is_ll[rows] = k, p, i

    if refine and proposals is None:
        proposals = refined_proposals(vae, x, refine, budget, condition=condition)
    drawn = 0
    for rows, q, zs, terms in importance_chunks(vae, x, num_samples, budget, condition=condition, proposals=proposals):
        moments.add(rows, q, zs)
        if rows != current:
            if current is not None:
                finish(current, pending)
            current, pending, drawn = rows, [], 0
        weights = terms.log_weights.double().cpu().numpy()
        pending.append(weights)
        take = max(0, min(keep - drawn, len(weights)))
        if take:
            z[drawn : drawn + take, rows] = zs[:take].cpu().numpy()
            log_lik[drawn : drawn + take, rows] = terms.log_px_z[:take].cpu().numpy()
            log_w[drawn : drawn + take, rows] = weights[:take]
        drawn += len(weights)
    if current is not None:
        finish(current, pending)
    return PosteriorDraws(z, log_lik, log_w, khat, psis_ll, is_ll, num_samples, moments, refine)


_EXAMPLE_DIM = {"z": 1, "log_likelihood": 1, "log_weight": 1}  # (draws, n, ...): examples second
_PER_EXAMPLE = ("z", "log_likelihood", "log_weight", "pareto_k", "psis_log_likelihood", "is_log_likelihood")


def posterior_draws_sharded(vae, x: torch.Tensor, num_samples: int, keep_draws: Optional[int] = None,
                            budget: int = BUDGET, seed: int = 0,
                            group: distributed.Group = distributed.SINGLE,
                            condition: Optional[torch.Tensor] = None, refine: int = 0) -> PosteriorDraws:
    """:func:`posterior_draws` over seeded blocks of examples shared among the ranks: the
    results do not depend on the number of processes (see ``distributed.blockwise``).
    ``condition``: each example's covariates, where the model reads them."""
    proposals = refined_proposals_sharded(vae, x, refine, budget, seed, group, condition) if refine else None

    def compute(rows: slice) -> dict:
        d = posterior_draws(vae, x[rows], num_samples, keep_draws, budget, None if condition is None else condition[rows],
                            proposals=proposal_rows(proposals, rows))
        arrays = {name: torch.as_tensor(getattr(d, name)) for name in _PER_EXAMPLE}
        return {**arrays, "moment_sum": d.moments.sum, "moment_sum_squares": d.moments.sum_squares,
                "moment_exact": d.moments.exact, "moment_std": d.moments.std}

    block = example_blocks(vae, len(x), num_samples, budget)
    full = distributed.blockwise(len(x), block, group, compute, seed, _EXAMPLE_DIM)
    moments = PosteriorMoments(len(x), vae.latent_dim, num_samples, {"device": x.device, "dtype": x.dtype})
    moments.sum, moments.sum_squares, moments.exact = full["moment_sum"], full["moment_sum_squares"], full["moment_exact"]
    moments.std = full["moment_std"]
    numpy = {name: full[name].cpu().numpy() for name in _PER_EXAMPLE}
    return PosteriorDraws(**numpy, num_samples=num_samples, moments=moments, refine=refine)


def _data_dims(data_shape: tuple[int, ...]) -> list[str]:
    names = {1: ["feature"], 2: ["row", "column"], 3: ["channel", "row", "column"]}
    return ["obs"] + names.get(len(data_shape), [f"x_dim_{i}" for i in range(len(data_shape))])


def to_inference_data(vae, x: torch.Tensor, num_samples: int = 1000, labels=None, keep_draws: Optional[int] = None,
                      budget: int = BUDGET):
    """The amortized posterior of ``vae`` at the examples ``x`` as ArviZ's container
    (InferenceData on ArviZ 0.x, an xarray.DataTree on 1.x: see ``arviz_compat``).

    * posterior: ``z`` (chain, draw, obs, latent), draws from q(z|x_n);
    * sample_stats: ``log_likelihood_x`` (chain, draw, obs), log p(x_n | z_s), and
      ``log_importance_weight`` (chain, draw, obs); per example (obs) ``pareto_k`` and
      the PSIS and plain importance-sampling estimates of log p(x_n)
      (``psis_log_likelihood``, ``is_log_likelihood``). There is no ``log_likelihood``
      group: ``az.loo`` on these values would not be leave-one-out (module docstring);
    * observed_data: ``x``; constant_data: ``label`` when ``labels`` are given.

    The draws are independent (one chain). ``pareto_k`` uses all ``num_samples`` draws;
    the groups keep the first ``keep_draws`` (default: all).
    """
    vae.eval()
    draws = posterior_draws(vae, x, num_samples, keep_draws, budget)
    return draws_to_inference_data(draws, x, labels)


def draws_to_inference_data(draws: PosteriorDraws, x: torch.Tensor, labels=None):
    """InferenceData (ArviZ 0.x) or DataTree (1.x) from :func:`posterior_draws` (see :func:`to_inference_data`)."""
    return arviz_compat.to_data(draws_to_groups(draws, x, labels))


def draws_to_groups(draws: PosteriorDraws, x: torch.Tensor, labels=None) -> dict[str, xr.Dataset]:
    """The groups of :func:`to_inference_data` as plain xarray Datasets, the same whichever
    ArviZ is installed (``arviz_compat.to_data`` wraps them)."""
    n, latent = len(x), draws.z.shape[-1]
    coords = {"obs": np.arange(n), "latent": np.arange(latent)}
    sample = ("chain", "draw")
    attrs = {"inference_library": "pyro_vae", "num_samples": draws.num_samples, "draws_kept": int(draws.z.shape[0]),
             "source": "amortized posterior q(z|x)" if not draws.refine else
             f"q(z|x) refined per example by {draws.refine} steps on its ELBO (semi-amortized)"}
    on_draws = {"chain": [0], "draw": np.arange(draws.z.shape[0])}
    posterior = xr.Dataset({"z": ((*sample, "obs", "latent"), draws.z[None])}, coords={**on_draws, **coords}, attrs=attrs)
    sample_stats = xr.Dataset({
        "log_likelihood_x": ((*sample, "obs"), draws.log_likelihood[None]),
        "log_importance_weight": ((*sample, "obs"), draws.log_weight[None]),
        "pareto_k": ("obs", draws.pareto_k),
        "psis_log_likelihood": ("obs", draws.psis_log_likelihood),
        "is_log_likelihood": ("obs", draws.is_log_likelihood),
    }, coords={**on_draws, "obs": coords["obs"]}, attrs=attrs)
    observed = x.detach().cpu().numpy()
    dims = _data_dims(tuple(x.shape[1:]))
    result = {"posterior": posterior, "sample_stats": sample_stats,
              "observed_data": xr.Dataset({"x": (dims, observed)}, coords={d: np.arange(k) for d, k in zip(dims, observed.shape)})}
    if labels is not None:
        result["constant_data"] = xr.Dataset({"label": ("obs", labels.detach().cpu().numpy())}, coords={"obs": coords["obs"]})
    return result
