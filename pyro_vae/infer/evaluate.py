"""Held-out evaluation by importance sampling with q(z|x) as the proposal.

For each example, S draws z_s ~ q(z|x) give log weights log w_s = log p(x, z_s) -
log q(z_s|x) and

    log p(x)   ~ log 1/S sum_s w_s           (Burda et al., 2016; S = 5000 as in the literature)
    ELBO(x)    ~ 1/S sum_s log w_s
    rec(x)     ~ 1/S sum_s log p(x|z_s),     KL(x) ~ 1/S sum_s [log q(z_s|x) - log p(z_s)].

The work is chunked over examples and samples so that one decoder pass holds at most
``budget`` output values: memory is bounded whatever S and the number of examples.
E_q[z|x] for active units (:mod:`pyro_vae.infer.metrics`) is taken as
:class:`PosteriorMoments` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator, Optional

import torch
from pyro.distributions import Independent, Normal
from torch.distributions import kl_divergence
from torch import Tensor

from .. import distributed
from ..model.condition import given, prior_reads_condition
from ..errors import RunError
from ..model.vae import ImportanceTerms
from .refine import PARTICLES, refine_gaussian

BUDGET = 2**23  # decoder output values per chunk
MAX_ROWS = 2**16  # latent draws per chunk: bounds the networks' hidden layers when outputs are few


def chunk_plan(num_samples: int, num_examples: int, values_per_sample: int, budget: int = BUDGET) -> tuple[int, int]:
    """(examples, samples) per chunk: examples * samples draws, each holding values_per_sample
    values (decoder outputs, and what scoring z under the prior and the posterior holds),
    within ``budget`` values and MAX_ROWS draws."""
    rows = max(1, min(MAX_ROWS, budget // max(values_per_sample, 1)))
    if num_samples >= rows:
        return 1, rows
    return max(1, min(num_examples, rows // num_samples)), num_samples


def example_blocks(vae, num_examples: int, num_samples: int, budget: int = BUDGET) -> int:
    """Examples per seeded block of a sharded evaluation: within one chunk's budget, and
    about 1/16 of the examples so that several ranks share the work. It depends on the
    data and the model only, never on the number of ranks (so neither do the results)."""
    per_chunk, _ = chunk_plan(num_samples, num_examples, vae.values_per_draw, budget)
    return max(1, min(per_chunk, math.ceil(num_examples / 16)))


def importance_chunks(vae, x: Tensor, num_samples: int, budget: int = BUDGET, prior=None,
                      condition: Optional[Tensor] = None,
                      proposals: Optional[tuple[Tensor, Tensor]] = None) -> Iterator[tuple[slice, object, Tensor, ImportanceTerms]]:
    """(examples, q, z of shape (s, b, latent), the log-densities) chunk by chunk; with
    covariates, each example's own row of ``condition`` (log p(x | c)).

    p(z) is built once (``prior``, or ``vae.latent_prior()``): a VampPrior runs the encoder on
    all its pseudo-inputs to build it; a prior p(z | c) is built per chunk. ``proposals``, the
    (means, sds) of :func:`refined_proposals`, replace the encoder's q(z|x) as the proposal."""
    per_chunk, samples = chunk_plan(num_samples, len(x), vae.values_per_draw, budget)
    per_example = condition is not None and prior_reads_condition(vae)
    prior = vae.latent_prior() if prior is None and not per_example else prior
    for start in range(0, len(x), per_chunk):
        xb = x[start : start + per_chunk]
        rows = slice(start, start + len(xb))
        with given(vae, None if condition is None else condition[rows]):
            q = vae.q(xb) if proposals is None else proposal_q(proposal_rows(proposals, rows))
            p = vae.latent_prior() if per_example else prior
            for drawn in range(0, num_samples, samples):
                z = q.rsample((min(samples, num_samples - drawn),))
                terms = ImportanceTerms(vae.p_x(z, xb).log_prob(xb), p.log_prob(z), q.log_prob(z))
                yield rows, q, z, terms


NOT_REFINABLE = "$refine refines a Gaussian q(z|x); this run has a discrete latent y too: evaluate it without $refine"


def refined_proposals(vae, x: Tensor, steps: int, budget: int = BUDGET, prior=None,
                      condition: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(means, sds), each (n, latent), of the encoder's q(z|x) refined by ``steps`` steps on
    each example's ELBO (:mod:`pyro_vae.infer.refine`), as many examples at once as one
    chunk's ``budget`` holds with the refinement's draws (in practice all of them)."""
    if vae.classes:
        raise RunError(NOT_REFINABLE)
    per_block, _ = chunk_plan(PARTICLES, len(x), vae.values_per_draw, budget)
    per_example = condition is not None and prior_reads_condition(vae)
    means, sds = [], []
    for start in range(0, len(x), per_block):
        rows = slice(start, start + per_block)
        with given(vae, None if condition is None else condition[rows]):
            p = vae.latent_prior() if per_example or prior is None else prior
            q = refine_gaussian(vae, x[rows], vae.q(x[rows]), p, steps)
        means.append(q.mean)
        sds.append(q.stddev)
    return torch.cat(means), torch.cat(sds)


REFINE_SEED = 7_919  # added to the seed of the refinement's draws: never the importance draws' own


def refined_proposals_sharded(vae, x: Tensor, steps: int, budget: int = BUDGET, seed: int = 0,
                              group: distributed.Group = distributed.SINGLE,
                              condition: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """:func:`refined_proposals` in seeded blocks shared among the ranks, as large as one
    chunk holds (``distributed.blockwise``): the same on every rank whatever their number."""
    if vae.classes:
        raise RunError(NOT_REFINABLE)
    block, _ = chunk_plan(PARTICLES, len(x), vae.values_per_draw, budget)

    def compute(rows: slice) -> dict:
        mean, sd = refined_proposals(vae, x[rows], steps, budget, None, None if condition is None else condition[rows])
        return {"mean": mean, "sd": sd}

    full = distributed.blockwise(len(x), block, group, compute, seed + REFINE_SEED)
    return full["mean"], full["sd"]


def proposal_rows(proposals: Optional[tuple[Tensor, Tensor]], rows) -> Optional[tuple[Tensor, Tensor]]:
    """The refined proposals of ``rows`` (a slice or indices; None stays None: the encoder's q)."""
    return None if proposals is None else (proposals[0][rows], proposals[1][rows])


def proposal_q(proposals: tuple[Tensor, Tensor]) -> Normal:
    """Refined proposals (means, sds) as the diagonal normal q(z|x) they are, one per example."""
    return Normal(*proposals).to_event(1)


def closed_form_mean(q) -> Optional[Tensor]:
    """E_q[z], or None where q has no closed form (flows)."""
    try:
        return q.mean
    except NotImplementedError:
        return None


def closed_form_std(q) -> Optional[Tensor]:
    """The sd of q per dimension, or None where q has no closed form."""
    try:
        return q.stddev
    except NotImplementedError:
        try:
            return q.variance.sqrt()
        except NotImplementedError:
            return None


class PosteriorMoments:
    """Per-example posterior means m_n = E_q[z|x_n], accumulated chunk by chunk.

    Where q has a closed-form mean it is used. Otherwise m_n is the Monte Carlo mean of
    all S draws, and its Monte Carlo variance Var_q[z|x_n]/S is kept: the variance over
    examples of the estimated means is Cov_x(m) plus the average of those, which
    :func:`~pyro_vae.infer.metrics.active_units` subtracts (with S = 50 draws from q = N(0, I) the raw variance
    is 0.02, over the 0.01 threshold, for units that are all inactive).
    """

    def __init__(self, n: int, latent_dim: int, num_samples: int, like: dict):
        self.num_samples = num_samples
        self.sum = torch.zeros(n, latent_dim, **like)
        self.sum_squares = torch.zeros(n, latent_dim, **like)
        self.std = torch.full((n, latent_dim), math.nan, **like)  # q's sd where it has one in closed form
        self.exact = torch.zeros(n, dtype=torch.bool, device=like["device"])
        self._seen: set[int] = set()

    def add(self, rows: slice, q, z: Tensor) -> None:
        """One chunk: q for the examples ``rows``, z of shape (s, b, latent) drawn from it."""
        if rows.start not in self._seen:  # once per example chunk
            self._seen.add(rows.start)
            mean = closed_form_mean(q)
            if mean is not None:
                self.exact[rows] = True
                self.sum[rows] = mean * self.num_samples
                std = closed_form_std(q)
                if std is not None:
                    self.std[rows] = std
        if not self.exact[rows.start]:
            self.sum[rows] += z.sum(0)
            self.sum_squares[rows] += z.square().sum(0)

    @property
    def mean(self) -> Tensor:
        return self.sum / self.num_samples

    @property
    def mc_variance(self) -> Tensor:
        """Var of each estimated mean over the draws (n, latent): 0 where exact."""
        S = self.num_samples
        if S < 2:
            spread = torch.full_like(self.sum, math.inf)
        else:
            spread = (self.sum_squares - self.sum.square() / S).clamp_min(0) / (S - 1)
        return torch.where(self.exact.unsqueeze(-1), torch.zeros_like(spread), spread / S)


def _kl_per_dim(q, prior) -> Optional[Tensor]:
    """Analytic KL per latent dimension when q and p are both factorized normals."""
    if not (isinstance(q, Independent) and isinstance(prior, Independent)):
        return None
    if not (isinstance(q.base_dist, Normal) and isinstance(prior.base_dist, Normal)):
        return None
    return kl_divergence(q.base_dist, prior.base_dist)


@dataclass
class PerExample:
    """Per-example estimates (each of length n) and the posterior means (n, latent)."""

    log_likelihood: Tensor
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    posterior_mean: Tensor
    kl_per_dim: Optional[Tensor]  # (n, latent) when analytic
    posterior_mean_mc_variance: Optional[Tensor] = None  # (n, latent): 0 where the mean is exact
    class_probs: Optional[Tensor] = None  # (n, classes): q(y|x), with a discrete latent


@torch.no_grad()
def importance_sample(vae, x: Tensor, num_samples: int, budget: int = BUDGET,
                      condition: Optional[Tensor] = None, refine: int = 0,
                      proposals: Optional[tuple[Tensor, Tensor]] = None) -> PerExample:
    """Per-example estimates (see the module docstring); with covariates, log p(x | c) for
    each example's own row of ``condition`` (the per-dimension KL is left out where the prior
    is p(z | c)). With ``refine`` steps the proposal is q(z|x) refined per example
    (:mod:`pyro_vae.infer.refine`; or ``proposals``, refined already), and the ELBO, KL and
    posterior means are the refined q's."""
    if vae.classes:
        if refine:
            raise RunError(NOT_REFINABLE)
        return importance_sample_classes(vae, x, num_samples, budget, condition)
    n, S = len(x), num_samples
    like = {"device": x.device, "dtype": x.dtype}
    lse = torch.full((n,), -math.inf, **like)
    sums = {key: torch.zeros(n, **like) for key in ("log_w", "log_px_z", "kl")}
    moments = PosteriorMoments(n, vae.latent_dim, S, like)
    per_example = condition is not None and prior_reads_condition(vae)
    kl_dims: Optional[Tensor] = None if per_example else torch.zeros(n, vae.latent_dim, **like)
    first_chunk: set[int] = set()
    prior = None if per_example else vae.latent_prior()
    if refine and proposals is None:
        proposals = refined_proposals(vae, x, refine, budget, prior, condition)
    for rows, q, z, terms in importance_chunks(vae, x, S, budget, prior, condition, proposals):
        log_w = terms.log_weights
        lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(log_w, 0))
        sums["log_w"][rows] += log_w.sum(0)
        sums["log_px_z"][rows] += terms.log_px_z.sum(0)
        sums["kl"][rows] += (terms.log_qz - terms.log_pz).sum(0)
        moments.add(rows, q, z)
        if rows.start not in first_chunk and kl_dims is not None:  # once per example chunk
            first_chunk.add(rows.start)
            per_dim = _kl_per_dim(q, prior)
            if per_dim is None:
                kl_dims = None
            else:
                kl_dims[rows] = per_dim
    return PerExample(
        log_likelihood=lse - math.log(S),
        elbo=sums["log_w"] / S,
        reconstruction=sums["log_px_z"] / S,
        kl=sums["kl"] / S,
        posterior_mean=moments.mean,
        kl_per_dim=kl_dims,
        posterior_mean_mc_variance=moments.mc_variance,
    )


@torch.no_grad()
def importance_sample_classes(vae, x: Tensor, num_samples: int, budget: int = BUDGET,
                              condition: Optional[Tensor] = None) -> PerExample:
    """:func:`importance_sample` for a discrete latent y, summed exactly: for each class y,
    S draws z_s ~ q(z|x, y) with w_{y,s} = p(x, y, z_s) / q(z_s|x, y) give

        log p(x) ~ logsumexp_y log 1/S sum_s w_{y,s}
        ELBO(x)  ~ sum_y q(y|x) [1/S sum_s log w_{y,s} - log q(y|x)]
        rec(x)   ~ sum_y q(y|x) 1/S sum_s log p(x|y, z_s),   KL(x) = rec(x) - ELBO(x)

    (y's KL included), and E_q[z|x] = sum_y q(y|x) E_q[z|x, y]; with covariates, given each
    example's own row of ``condition``."""
    n, S, C = len(x), num_samples, vae.classes
    like = {"device": x.device, "dtype": x.dtype}
    per_chunk, samples = chunk_plan(S, n, vae.values_per_draw, budget)
    log_py = torch.log_softmax(vae.class_logits, -1)
    log_px = torch.empty(n, C, **like)
    elbo_y, rec_y = torch.empty(n, C, **like), torch.empty(n, C, **like)
    moments = [PosteriorMoments(n, vae.latent_dim, S, like) for _ in range(C)]  # E_q[z|x, y] per class
    log_qy = torch.empty(n, C, **like)
    eye = torch.eye(C, **like)
    for start in range(0, n, per_chunk):
        rows = slice(start, min(start + per_chunk, n))
        xb = x[rows]
        u = vae.encoder_input(xb)
        with given(vae, None if condition is None else condition[rows]):
            log_qy[rows] = torch.log_softmax(vae.classifier(u), -1)
            for c in range(C):
                y = eye[c].expand(len(xb), C)
                q, p_z = vae.q_z(u, y), vae.p_z(y)
                lse = torch.full((len(xb),), -math.inf, **like)
                sum_log_w, sum_log_lik = torch.zeros(len(xb), **like), torch.zeros(len(xb), **like)
                for drawn in range(0, S, samples):
                    z = q.sample((min(samples, S - drawn),))
                    log_lik = vae.p_x_given(z, y, xb).log_prob(xb)
                    log_w = log_lik + p_z.log_prob(z) + log_py[c] - q.log_prob(z)
                    lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
                    sum_log_w += log_w.sum(0)
                    sum_log_lik += log_lik.sum(0)
                    moments[c].add(rows, q, z)
                log_px[rows, c] = lse - math.log(S)
                elbo_y[rows, c], rec_y[rows, c] = sum_log_w / S, sum_log_lik / S
    q_y = log_qy.exp()
    elbo = (q_y * (elbo_y - log_qy)).sum(-1)
    reconstruction = (q_y * rec_y).sum(-1)
    return PerExample(
        log_likelihood=torch.logsumexp(log_px, -1),
        elbo=elbo,
        reconstruction=reconstruction,
        kl=reconstruction - elbo,
        posterior_mean=sum(q_y[:, c, None] * moments[c].mean for c in range(C)),
        kl_per_dim=None,
        posterior_mean_mc_variance=sum(q_y[:, c, None] ** 2 * moments[c].mc_variance for c in range(C)),
        class_probs=q_y,
    )


def importance_sample_sharded(vae, x: Tensor, num_samples: int, budget: int = BUDGET, seed: int = 0,
                              group: distributed.Group = distributed.SINGLE,
                              condition: Optional[Tensor] = None, refine: int = 0) -> PerExample:
    """:func:`importance_sample` over seeded blocks of examples shared among the ranks
    (``distributed.blockwise``): each example's draws depend on (seed, its block) only, so
    every number of processes, one included, gives the same per-example results."""
    proposals = refined_proposals_sharded(vae, x, refine, budget, seed, group, condition) if refine else None

    def compute(rows: slice) -> dict:
        result = importance_sample(vae, x[rows], num_samples, budget, None if condition is None else condition[rows],
                                   proposals=proposal_rows(proposals, rows))
        return {f.name: getattr(result, f.name) for f in fields(result) if getattr(result, f.name) is not None}

    block = example_blocks(vae, len(x), num_samples, budget)
    full = distributed.blockwise(len(x), block, group, compute, seed)
    return PerExample(**{f.name: full.get(f.name) for f in fields(PerExample)})


@torch.no_grad()
def elbo_terms(vae, x: Tensor, num_samples: int = 1, condition: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Per-example Monte Carlo reconstruction and KL (the validation metrics)."""
    result = importance_sample(vae, x, num_samples, condition=condition)
    return result.reconstruction, result.kl
