"""What an ELBO estimator supports, declared in one place (``EstimatorTraits``), which the
model reads to treat its latent sites as the estimator needs and to refuse what it cannot
do. The estimators (``infer/estimators.py``) attach their traits as ``elbo.traits``; an
estimator from outside the library without them gets the defaults: reparameterized
continuous sites only, Monte Carlo terms, mini-batches allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class EstimatorTraits:
    """``discrete``: how a discrete latent site is treated, ``enumerate`` (summed exactly),
    ``score`` (sampled, score-function gradient; ``baseline`` and ``baseline_beta`` for
    TraceGraph_ELBO's), ``relaxed`` (Gumbel-softmax, ``straight_through``), or None (it
    cannot be). ``analytic_kl``: KL(q||p) of each latent site in closed form against the
    model's conditional at the guide's draws, which is unbiased only when the guide samples
    the layers in the model's order. ``jit``: Pyro's JIT traces the loss. ``subsampling``:
    the objective is right under mini-batches (a data plate subsampled)."""

    discrete: Optional[Literal["enumerate", "score", "relaxed"]] = None
    analytic_kl: bool = False
    jit: bool = False
    subsampling: bool = True
    baseline: Literal["average", "neural", "none"] = "none"
    baseline_beta: float = 0.9
    straight_through: bool = False


def traits_of(estimator) -> EstimatorTraits:
    """The estimator's declared traits, or the defaults for one that declares none."""
    return getattr(estimator, "traits", None) or EstimatorTraits()
