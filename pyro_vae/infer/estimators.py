"""ELBO estimators, each a ``pyro.infer.ELBO`` that ``SVI`` steps.

Pyro's own classes serve where they are correct under mini-batching (``trace_elbo``,
``trace_mean_field``, ``trace_graph``, ``tail_adaptive`` on full batches). The
importance-weighted family is ours, on one base class: Pyro's ``RenyiELBO`` reduces
the particles per example, but its log-densities already carry the N/B subsampling
scale, which thus lands inside the log-sum-exp: it computes
sum_n log 1/K sum_k w_kn^(N/B) where the full-data objective needs
(N/B) sum_n log 1/K sum_k w_kn, so every mini-batch estimate is biased (it is right
only on full batches). Here the log importance weights are kept per example,

    log w_{k,n} = log p(x_n|z_{k,n}) + beta [log p(z_{k,n}) - log q(z_{k,n}|x_n)],

reduced over the K particles per example, and only then summed and scaled by N/B.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Annotated, Literal

import torch
from pydantic import Field
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
)
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import kl_divergence

from ..errors import NotTraceable, SpecError
from ..model.traits import EstimatorTraits, traits_of
from ..registry import Registry
from .pyro_internals import ReplayValues, particle_traces, vectorized_traces
from .schedules import temperature

ESTIMATORS = Registry("estimator")
ESTIMATORS.protocol(ELBO)
Particles = Annotated[int, Field(gt=0, le=10_000)]
Samples = Annotated[int, Field(gt=0, le=10_000)]


def sample_sites(trace) -> list:
    """(name, site) of a Pyro trace's sample sites, in order."""
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


# --- the traced losses of Pyro's Trace_ELBO and TraceMeanField_ELBO (infer/compiled.py) -----
# Pyro's own loss code reads the loss with .item(), which a traced graph cannot hold.


def _reparameterized(guide_trace) -> None:
    for name, site in sample_sites(guide_trace):
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise NotTraceable(f"guide site {name!r} is not reparameterized (its gradient is a score function)")


def _elbo_particle(model_trace, guide_trace) -> tuple[Tensor, Tensor]:
    """log p(x, z) - log q(z|x) of one trace pair, each site scaled (Trace_ELBO's value), and
    the same in float64 summed site by site, as Trace_ELBO reports it (its sites' items)."""
    _reparameterized(guide_trace)
    terms = [site["log_prob_sum"] for _, site in sample_sites(model_trace)]
    terms += [-site["log_prob_sum"] for _, site in sample_sites(guide_trace) if not site["is_observed"]]
    return sum(terms), sum(t.detach().double() for t in terms)


def _mean_field_particle(model_trace, guide_trace) -> tuple[Tensor, Tensor]:
    """E_q log p(x|z) - KL(q||p), the KL in closed form where registered (TraceMeanField_ELBO's
    value), and its value in float64, as TraceMeanField_ELBO reports it."""
    _reparameterized(guide_trace)
    elbo = 0.0
    for name, model_site in sample_sites(model_trace):
        if model_site["is_observed"]:
            elbo = elbo + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        try:
            kl = scale_and_mask(kl_divergence(guide_site["fn"], model_site["fn"]), guide_site["scale"], guide_site["mask"])
            elbo = elbo - kl.sum()
        except NotImplementedError:
            elbo = elbo + model_site["log_prob_sum"] - guide_site["log_prob_sum"]
    for name, guide_site in sample_sites(guide_trace):
        if name not in model_trace.nodes:  # an auxiliary guide site
            elbo = elbo - guide_site["log_prob_sum"]
    return elbo, elbo.detach().double()


def _particles_traced_loss(particle, estimator, model, guide, *args) -> tuple[Tensor, Tensor]:
    """A Pyro ELBO's ``traced_loss``: (loss, surrogate) averaged over its particles, each
    particle's value from ``particle(model_trace, guide_trace)``."""
    loss, surrogate = 0.0, 0.0
    for model_trace, guide_trace in particle_traces(estimator, model, guide, args, {}):
        elbo, reported = particle(model_trace, guide_trace)
        loss = loss - reported / estimator.num_particles
        surrogate = surrogate - elbo / estimator.num_particles
    return loss, surrogate


def _pyro_elbo(cls, jit_cls, num_particles, vectorize_particles, jit, particle=None, **traits):
    """A Pyro ELBO with its :class:`EstimatorTraits` (``traits``: how it treats a discrete
    latent y, whether its KL is analytic, ...) and, where its value at one trace pair is
    ``particle``, its ``traced_loss`` for the compiled step."""
    elbo = (jit_cls if jit else cls)(
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=1,
        **({"ignore_jit_warnings": True} if jit else {}),
    )
    elbo.traits = EstimatorTraits(jit=jit, **traits)
    if particle is not None:
        elbo.traced_loss = partial(_particles_traced_loss, particle, elbo)
    return elbo


@ESTIMATORS.register("trace_elbo")
def trace_elbo(*, num_particles: Particles = 1, vectorize_particles: bool = False, jit: bool = False) -> ELBO:
    """Trace_ELBO: E_q[log p(x,z) - log q(z|x)], reparameterized Monte Carlo (Pyro); a discrete
    y gets the plain score function, each example's own log-weight as its signal (Pyro
    Rao-Blackwellizes over plates), no baseline."""
    return _pyro_elbo(Trace_ELBO, JitTrace_ELBO, num_particles, vectorize_particles, jit, _elbo_particle, discrete="score")


@ESTIMATORS.register("trace_enum")
def trace_enum(*, num_particles: Particles = 1, vectorize_particles: bool = False) -> ELBO:
    """TraceEnum_ELBO: a discrete y summed out exactly by parallel enumeration in the guide,
    sum_y q(y|x) [E_q(z|x,y) log p(x,y,z)/q(z|x,y) - log q(y|x)] (Pyro)."""
    return _pyro_elbo(TraceEnum_ELBO, None, num_particles, vectorize_particles, False, discrete="enumerate")


@ESTIMATORS.register("trace_mean_field")
def trace_mean_field(*, num_particles: Particles = 1, vectorize_particles: bool = False, jit: bool = False) -> ELBO:
    """TraceMeanField_ELBO: analytic KL(q||p) where registered, Monte Carlo otherwise (Pyro)."""
    return _pyro_elbo(TraceMeanField_ELBO, JitTraceMeanField_ELBO, num_particles, vectorize_particles, jit,
                      _mean_field_particle, analytic_kl=True)


@ESTIMATORS.register("trace_graph")
def trace_graph(
    *,
    num_particles: Particles = 1,
    vectorize_particles: bool = False,
    jit: bool = False,
    baseline: Literal["average", "neural", "none"] = "average",
    baseline_beta: Annotated[float, Field(ge=0, lt=1)] = 0.9,
) -> ELBO:
    """TraceGraph_ELBO: Rao-Blackwellized score-function terms for non-reparameterized sites
    (Pyro), for a discrete y with a baseline: a decaying average of the downstream cost,
    one per batch position, not per example (``average``), that plus a network of x fitted to the residual (``neural``; Mnih &
    Gregor, 2014), or ``none``."""
    return _pyro_elbo(TraceGraph_ELBO, JitTraceGraph_ELBO, num_particles, vectorize_particles, jit, discrete="score",
                      baseline=baseline, baseline_beta=baseline_beta)


class PartwiseLoss:
    """An estimator applied to each independent part of a model's objective in a trace of
    its own (``model(*args, part=p)``, ``guide(*args, part=p)`` for p in ``parts``), the
    losses summed: the same objective, but a score-function site's learning signal holds
    only the terms of its own part (see ``VAE.objective_parts``). Pyro's SVI takes it as
    its ``loss`` and ``loss_and_grads``; everything else (traits, a temperature schedule) is the
    estimator's."""

    def __init__(self, estimator, parts: tuple[str, ...]):
        self.estimator, self.parts = estimator, parts

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self._summed(self.estimator.loss_and_grads, model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self._summed(self.estimator.loss, model, guide, *args, **kwargs)

    def _summed(self, method, model, guide, *args, **kwargs) -> float:
        with warnings.catch_warnings():
            # a part that observes y (M2's labelled examples) has nothing to enumerate, and
            # TraceEnum_ELBO warns so on every step: that is expected here
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")
            return sum(method(model, guide, *args, part=part, **kwargs) for part in self.parts)

    def __getattr__(self, name):
        return getattr(self.estimator, name)


def applied_to(estimator, vae):
    """The estimator as training applies it to ``vae``'s model and guide: part by part where
    the objective has independent parts (``VAE.objective_parts``), else itself."""
    parts = vae.objective_parts
    return estimator if parts == ("all",) else PartwiseLoss(estimator, parts)


class RelaxedELBO(Trace_ELBO):
    """Trace_ELBO on a model whose discrete y is relaxed (Gumbel-softmax / Concrete; Jang et
    al., 2017; Maddison et al., 2017) at a temperature annealed geometrically from
    ``initial_temperature`` to ``final_temperature`` over ``anneal_epochs`` epochs:

        tau(t) = max(final, initial * (final / initial)^(t / anneal_epochs)),  t in epochs.

    Biased: the objective is exact only as tau -> 0 (model/categorical.py says how)."""

    def __init__(self, initial_temperature: float, final_temperature: float, anneal_epochs: float, straight_through: bool,
                 num_particles: int = 1):
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.initial_temperature, self.final_temperature = initial_temperature, final_temperature
        self.anneal_epochs = anneal_epochs
        self.traits = EstimatorTraits(discrete="relaxed", straight_through=straight_through)

    def temperature(self, epochs: float) -> float:
        """tau after ``epochs`` (a fraction) of training (``schedules.temperature``)."""
        return temperature(epochs, self.initial_temperature, self.final_temperature, self.anneal_epochs)


Temperature = Annotated[float, Field(gt=0, le=100)]


@ESTIMATORS.register("relaxed")
def relaxed(
    *,
    initial_temperature: Temperature = 1.0,
    final_temperature: Temperature = 0.5,
    anneal_epochs: Annotated[float, Field(ge=0)] = 0.0,
    straight_through: bool = False,
    num_particles: Particles = 1,
) -> ELBO:
    """Gumbel-softmax / Concrete relaxation of a discrete y with an annealed temperature;
    ``straight_through`` for hard one-hot samples (Jang et al., 2017; Maddison et al., 2017)."""
    return RelaxedELBO(initial_temperature, final_temperature, anneal_epochs, straight_through, num_particles)


class TailAdaptive(Trace_ELBO):
    """The tail-adaptive f-divergence gradient (Wang et al., 2018, Algorithm 1), with the
    ELBO reported as its loss.

    With K particles z_k ~ q and log weights log w_k = log p(x, z_k) - log q(z_k|x)
    (pooled over the batch: one weight per particle of all latents, so full batches
    only), each particle is weighted by the empirical tail probability of its weight,

        gamma_k = F_bar(w_k)^beta,  F_bar(w_k) = 1/K #{j : w_j >= w_k},  beta < 0,

    and the gradient is that of -sum_k gamma~_k log w_k with gamma~ = gamma / sum(gamma)
    held fixed: the largest weight gets the largest gamma (mass-covering, as an
    alpha-divergence with alpha adapted to the weights' tail). The reported loss is
    -1/K sum_k log w_k, the ELBO estimate from the same draws.

    Pyro's ``TraceTailAdaptive_ELBO`` is not used: its ranks are ``argsort`` without
    the inverse permutation (pyro-ppl/pyro#3170: for log weights [3, 1, 2] it gives
    ranks [2, 3, 1]), it reports no loss (``inf``), and its surrogate is divided by K
    once more than the weights' normalization needs.
    """

    traits = EstimatorTraits(subsampling=False)

    def __init__(self, num_particles: int, tail_adaptive_beta: float = -1.0):
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        self.tail_adaptive_beta = tail_adaptive_beta

    def particle_log_weights(self, model, guide, *args, **kwargs) -> Tensor:
        """log w_k of shape (K,): log p(x, z_k) - log q(z_k|x), each site scaled (beta)."""
        model_trace, guide_trace = vectorized_traces(self, model, guide, args, kwargs)
        log_w: Tensor | float = 0.0
        for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
            for name, site in sample_sites(trace):
                if sign < 0 and not site["fn"].has_rsample:
                    raise NotImplementedError(f"tail_adaptive needs a reparameterized guide; site {name!r} is not")
                log_w = log_w + sign * site["log_prob"].reshape(self.num_particles, -1).sum(-1)
        return log_w

    def tail_weights(self, log_w: Tensor) -> Tensor:
        """gamma~_k: F_bar(w_k)^beta normalized to sum to 1 (ties share their tail count)."""
        tail_count = (log_w.unsqueeze(0) >= log_w.unsqueeze(1)).sum(1).to(log_w.dtype)
        gamma = (tail_count / len(log_w)) ** self.tail_adaptive_beta
        return gamma / gamma.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return -self.particle_log_weights(model, guide, *args, **kwargs).mean().item()

    def surrogate(self, log_w: Tensor) -> Tensor:
        """-sum_k gamma~_k log w_k with the weights gamma~ held fixed."""
        return -(self.tail_weights(log_w.detach()) * log_w).sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        return self.surrogate(self.particle_log_weights(model, guide, *args, **kwargs))

    def traced_loss(self, model, guide, *args) -> tuple[Tensor, Tensor]:
        """(loss, surrogate) as tensors, for the compiled step."""
        log_w = self.particle_log_weights(model, guide, *args)
        return -log_w.detach().mean(), self.surrogate(log_w)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        log_w = self.particle_log_weights(model, guide, *args, **kwargs)
        surrogate = self.surrogate(log_w)
        if surrogate.requires_grad:
            surrogate.backward()
        return -log_w.detach().mean().item()


@ESTIMATORS.register("tail_adaptive")
def tail_adaptive(
    *, num_particles: Annotated[int, Field(ge=2, le=10_000)] = 5, tail_adaptive_beta: Annotated[float, Field(ge=-1, lt=0)] = -1.0
) -> ELBO:
    """Tail-adaptive f-divergence (Wang et al., 2018); full batches only."""
    return TailAdaptive(num_particles, tail_adaptive_beta)


def _subsample_factor(site) -> float:
    """N/B for a site in a subsampled plate (1 otherwise)."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            factor *= frame.full_size / frame.size
    return factor


class ImportanceWeightedELBO(ELBO):
    """Base of the per-example importance-weighted objectives (see the module docstring).

    Subclasses reduce the (K, B) log weights to one value per example in
    :meth:`objective`. With ``stop_q``, log q is evaluated with the guide's parameters
    detached, so their gradient flows through the samples z only (the path derivative):
    the guide site gives ``infer["stopped_log_prob"]``, z -> that log-density, as
    ``VAE.guide`` does (see ``Posterior.stopped_log_prob``).
    """

    traits = EstimatorTraits()
    stop_q = False

    def __init__(self, num_particles: int):
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = self._guide_trace(guide, args, kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _guide_trace(self, guide, args, kwargs):
        """The guide's trace, whose values the model is replayed at."""
        return poutine.trace(guide).get_trace(*args, **kwargs)

    def log_weights(self, model, guide, *args, **kwargs) -> tuple[Tensor, float, list[Tensor]]:
        """(log w of shape (K, B), the N/B scale, the latent samples z)."""
        model_trace, guide_trace = vectorized_traces(self, model, guide, args, kwargs)
        log_w: Tensor | float = 0.0
        factor = 1.0
        latents = []
        for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
            for name, site in sample_sites(trace):
                if not any(f.dim == -1 for f in site["cond_indep_stack"]):
                    raise NotImplementedError(
                        f"{type(self).__name__} needs every latent variable inside the data plate; "
                        f"site {name!r} is global"
                    )
                if sign < 0:
                    if not site["fn"].has_rsample:
                        raise NotImplementedError(f"{type(self).__name__} needs a reparameterized guide; site {name!r} is not")
                    latents.append(site["value"])
                factor = _subsample_factor(site)
                if sign < 0 and self.stop_q:
                    log_p = self._stopped_log_prob(name, site)
                else:
                    log_p = site["fn"].log_prob(site["value"])
                log_w = log_w + sign * (site["scale"] / factor) * log_p
        if log_w.dim() == 1:  # K = 1: Pyro adds no particle plate
            log_w = log_w.unsqueeze(0)
        return log_w, factor, latents

    def _stopped_log_prob(self, name, site) -> Tensor:
        stopped = site["infer"].get("stopped_log_prob")
        if stopped is None:
            raise NotImplementedError(
                f"{type(self).__name__} evaluates log q with its parameters stopped: guide site {name!r} needs "
                "infer={'stopped_log_prob': z -> log q(z|x) with every parameter detached}, as VAE.guide gives"
            )
        return stopped(site["value"])

    def objective(self, log_w: Tensor) -> Tensor:
        """Per-example objective, shape (B,), from log weights of shape (K, B)."""
        raise NotImplementedError

    def surrogate(self, log_w: Tensor, latents: list[Tensor]) -> Tensor:
        """What is differentiated; by default the objective itself."""
        return self.objective(log_w)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        log_w, factor, latents = self.log_weights(model, guide, *args, **kwargs)
        return -factor * self.surrogate(log_w, latents).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_w, factor, _ = self.log_weights(model, guide, *args, **kwargs)
            return -factor * self.objective(log_w).sum().item()

    def traced_loss(self, model, guide, *args) -> tuple[Tensor, Tensor]:
        """(loss, surrogate) as tensors, for the compiled step; the loss rounded as the eager
        estimator rounds it (factor * sum.item())."""
        log_w, factor, latents = self.log_weights(model, guide, *args)
        loss = -factor * self.objective(log_w.detach()).sum().double()
        return loss, -factor * self.surrogate(log_w, latents).sum()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        log_w, factor, latents = self.log_weights(model, guide, *args, **kwargs)
        with torch.no_grad():
            loss = -factor * self.objective(log_w.detach()).sum().item()
        surrogate = -factor * self.surrogate(log_w, latents).sum()
        if surrogate.requires_grad:
            surrogate.backward()
        return loss


class RenyiBound(ImportanceWeightedELBO):
    """The variational Renyi bound (Li & Turner, 2016), per example:

        L_alpha(x) = 1/(1 - alpha) log 1/K sum_k w_k^(1 - alpha),

    alpha = 0 is the IWAE bound, alpha -> 1 the ELBO (Monte Carlo mean of log w).
    """

    def __init__(self, num_particles: int, alpha: float):
        super().__init__(num_particles)
        self.alpha = alpha

    def objective(self, log_w):
        if self.alpha == 1:
            return log_w.mean(0)
        scaled = (1 - self.alpha) * log_w
        return (torch.logsumexp(scaled, 0) - math.log(self.num_particles)) / (1 - self.alpha)


class IWAE(RenyiBound):
    """The importance-weighted bound (Burda et al., 2016): log 1/K sum_k w_k, per example."""

    def __init__(self, num_particles: int):
        super().__init__(num_particles, alpha=0.0)


class DReG(IWAE):
    """IWAE with doubly reparameterized gradients (Tucker et al., 2019).

    The decoder's gradient is IWAE's, sum_k w~_k grad_theta log w_k. The encoder's is
    sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi) with log q's parameters stopped:
    the same expectation as IWAE's, without the score term whose variance grows with K.
    It holds for any number of reparameterized sites z = (z_1, ..., z_L) (Tucker et al.,
    section 4): d log w_k / d z_k is then the partial derivative in each layer, and d z_k /
    d phi the total derivative of the ancestral draw.

    Implemented as IWAE's surrogate with log q stopped and a hook that multiplies each
    sample's incoming gradient by its normalized weight w~_k once more. With several
    layers, where one layer's draw depends on another's, a hook on the drawn z_l would
    also catch the gradient that reaches z_l through a later layer's draw and multiply it
    twice; so the guide and the model are replayed at views of the draws
    (:meth:`_guide_trace`): the log-densities read the views, whose hooks weight each
    partial derivative once, and the draws' own graph carries it to phi unweighted.
    """

    stop_q = True

    def _guide_trace(self, guide, args, kwargs):
        guide_trace = super()._guide_trace(guide, args, kwargs)
        latent = [name for name, site in sample_sites(prune_subsample_sites(guide_trace)) if not site["is_observed"]]
        if len(latent) < 2:
            return guide_trace
        for name in latent:
            site = guide_trace.nodes[name]
            site["value"] = site["value"].view_as(site["value"])
        return poutine.trace(ReplayValues(trace=guide_trace)(guide)).get_trace(*args, **kwargs)

    def surrogate(self, log_w, latents):
        weights = torch.softmax(log_w.detach(), 0)
        for z in latents:
            if z.requires_grad:
                batch = _batch_dims(z, weights.numel())
                w = weights.reshape(*batch, *(1,) * (z.dim() - len(batch)))
                z.register_hook(lambda grad, w=w: grad * w)
        return self.objective(log_w)


def _batch_dims(z: Tensor, count: int) -> tuple[int, ...]:
    """z's leading dimensions that hold ``count`` (particles x examples) draws; the rest is its event."""
    for i in range(z.dim() + 1):
        if math.prod(z.shape[:i]) == count:
            return tuple(z.shape[:i])
    raise ValueError(f"draws of shape {tuple(z.shape)} do not hold {count} weights")


class STL(RenyiBound):
    """The ELBO with the 'sticking the landing' gradient (Roeder et al., 2017): the mean of
    log w over K particles, log q's parameters stopped, so an exact posterior gives
    zero-variance encoder gradients."""

    stop_q = True

    def __init__(self, num_particles: int):
        super().__init__(num_particles, alpha=1.0)


@ESTIMATORS.register("iwae")
def iwae(*, k: Samples = 5) -> ELBO:
    """IWAE bound with K importance samples per example, correct under mini-batching (Burda et al., 2016)."""
    return IWAE(k)


@ESTIMATORS.register("renyi")
def renyi(*, alpha: Annotated[float, Field(ge=-100, le=100)] = 0.5, k: Samples = 5) -> ELBO:
    """Renyi bound of order alpha with K samples per example; alpha = 0 is IWAE (Li & Turner, 2016)."""
    return IWAE(k) if alpha == 0 else RenyiBound(k, alpha)


@ESTIMATORS.register("iwae_dreg")
def iwae_dreg(*, k: Samples = 5) -> ELBO:
    """IWAE bound with doubly reparameterized encoder gradients (Tucker et al., 2019)."""
    return DReG(k)


@ESTIMATORS.register("stl")
def stl(*, k: Samples = 1) -> ELBO:
    """ELBO with 'sticking the landing' path-derivative encoder gradients (Roeder et al., 2017)."""
    return STL(k)


def supports_subsampling(elbo: ELBO) -> bool:
    return traits_of(elbo).subsampling


def check_estimator_fits(elbo: ELBO, kind: str, group, batch_size: int, num_data: int) -> None:
    """An estimator that pools each particle over the whole batch (no subsampling) can be
    neither split across processes nor used on mini-batches: refused, saying what to change."""
    if supports_subsampling(elbo):
        return
    if group.active:
        raise SpecError(
            f"inference.estimator: {kind} pools each particle over the whole batch and cannot be split across "
            f"{group.world_size} processes; run it in one process or choose another estimator"
        )
    if batch_size < num_data:
        raise SpecError(
            f"inference.estimator: {kind} does not support mini-batching; "
            f"set inference.schedule.batch_size >= {num_data} (the training set) or choose another estimator"
        )
