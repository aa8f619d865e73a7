"""The categorical latent y as a part of the latent structure: the Gaussian-mixture VAE
and the M2 model.

y is the top of the structure (:class:`CategoricalY`, held in ``VAE.structure.y``), with
p(y) uniform, and enters the layers below it in one of two ways (``model.discrete.shape``):

* ``feeds = "prior"`` (``mixture``): y is the layer above the top continuous layer z_L,
  p(z_L|y) = N(mu_y, diag sigma_y^2) learned per class (:class:`ClassConditionalPrior`, the
  prior slot; Dilokthanakul et al., 2016; Jiang et al., 2017, "VaDE"): clustering;
* ``feeds = "decoder"`` (``m2``): y beside the layers, read by the decoder with z,
  p(x | y, z) (Kingma et al., 2014): semi-supervised classification, class-conditional
  generation.

With one continuous layer these are p(y) p(z|y) p(x|z) and p(y) p(z) p(x|y, z); with
stacked layers (``model.upper_layers``) y sits above z_L or beside the decoder's input in
the same way. The guide factorizes as q(y|x) q(z|x, y): q(y|x) is the ``classifier``
network's softmax, q(z|x, y) the spec's posterior on the encoder's output for x and one-hot
y concatenated; with ``encoder_reads_y = False``, as q(y|x) q(z|x), the encoder reading x
alone (VaDE's factorization, Jiang et al., 2017), which admits any encoder kind and any
number of layers. With the mixture shape it clustered digits better: with q(z|x, y) the
encoder's random response to one-hot y gives some classes an advantage on every example at
the start, and fewer clusters survived; on MNIST the two guides tie (``models/gmvae.toml``,
BENCHMARKS.md).

How the site ``y`` is treated follows the estimator's traits (``VAE.use_estimator``):

* ``enumerate``: parallel enumeration in the guide, so TraceEnum_ELBO sums over y exactly;
* ``score``: y is sampled; its gradient is the score function with each example's own
  log-weight as the learning signal (both Pyro ELBOs Rao-Blackwellize over the data plate;
  with labelled examples the trainer traces the labelled plate apart, ``VAE.objective_parts``,
  since traced together its whole sum would enter every unlabelled y's signal):
  no baseline with Trace_ELBO; with TraceGraph_ELBO a decaying average of that signal and
  optionally a neural baseline subtracted (Mnih & Gregor, 2014);
* ``relaxed``: y is a Gumbel-softmax / Concrete sample at temperature tau (Jang et al.,
  2017; Maddison et al., 2017), optionally straight-through (hard one-hot forward). The
  decoder and p(z|y) read the relaxed one-hot vector (p(z|y) with mu = y^T mu_k and
  sigma = y^T sigma_k), and y's two log-densities are the categorical ones at the relaxed
  vector, <y, log p> and <y, log q>: exact at one-hot y, and biased by as much as the
  temperature leaves y away from the vertices.

Semi-supervised training (``data.labelled``): the labelled examples are held by the VAE
(``VAE.supervise``). Each step's objective is the unbiased estimate

    (N/B) sum_{unlabelled rows of the batch} U(x)
      + (N_l/b_l) sum_{b_l labelled examples} [L(x, y) + (alpha/N_l) log q(y|x)],

U(x) the ELBO with y latent and L(x, y) the ELBO of log p(x, y) (Kingma et al., 2014,
eq. 9): the data plate masks its labelled rows, and a second plate, ``labelled``,
subsamples b_l labelled examples (drawn in the guide, replayed in the model).

For evaluation and analysis, ``VAE.q``, ``VAE.latent_prior`` and ``VAE.p_x`` give the
marginals over y, sum_y q(y|x) q(z|x, y), sum_y p(y) p(z|y) and (M2) sum_y p(y) p(x|y, z),
so that every tool written for a continuous latent reads z correctly; the exact sum over y
(``infer/evaluate.py``) reads the conditionals ``VAE.q_z(u, y)``, ``VAE.p_z(y)`` and
``VAE.p_x_given(z, y, x)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .numerics import softplus_inverse
from .priors import Prior

MODES = ("enumerate", "score", "relaxed")  # how an estimator may treat y (EstimatorTraits.discrete)
SHAPES = {"mixture": "prior", "m2": "decoder"}  # model.discrete.shape -> where y enters


class CategoricalY(NamedTuple):
    """y's place in the structure: its number of ``classes``; ``feeds``, the part of the
    model that reads it (``prior``: p(z_L|y); ``decoder``: p(x|y, z)); and whether the
    guide's encoder reads it, q(z|x, y) (``encoder_reads_y``) or q(z|x)."""

    classes: int
    feeds: Literal["prior", "decoder"]
    encoder_reads_y: bool = True


class ClassConditionalPrior(Prior):
    """p(z|y) = N(mu_y, Sigma_y) per class, learned; ``prior()`` is the marginal
    p(z) = sum_y p(y) p(z|y).

    ``covariance = "diagonal"``: Sigma_y = diag sigma_y^2, sigma_y = softplus(raw_scale_y).
    ``covariance = "full"``: Sigma_y = L_y L_y^T with the Cholesky factor
    L_y = diag(softplus(raw_scale_y)) + the strictly lower triangle of ``off_diagonal_y``
    (zero at the start, so a full mixture starts as the diagonal one); with a relaxed one-hot
    y, L = sum_y y_k L_k, still lower triangular with a positive diagonal.

    The means start as N(0, 0.05^2 I) draws: apart, so that the symmetry between the classes
    is broken, and close, so that the x-dependent part of each example's ELBO decides its
    class. From N(0, I) draws the classes' ||mu_y||^2 differ by several nats, the same for
    every example, and the component nearest the encoder's first outputs took every example
    of MNIST within an epoch (every test image in one cluster; the figures before and after:
    BENCHMARKS.md, "Discrete latents on labelled MNIST")."""

    INITIAL_SPREAD = 0.05

    def __init__(self, latent_dim: int, classes: int, covariance: Literal["diagonal", "full"] = "diagonal"):
        super().__init__(latent_dim)
        self.covariance = covariance
        self.loc = nn.Parameter(self.INITIAL_SPREAD * torch.randn(classes, latent_dim))
        self.raw_scale = nn.Parameter(torch.full((classes, latent_dim), softplus_inverse(1.0)))
        if covariance == "full":
            self.off_diagonal = nn.Parameter(torch.zeros(classes, latent_dim, latent_dim))
        self.register_buffer("class_logits", torch.zeros(classes))

    @property
    def values_per_draw(self) -> int:
        return self.loc.numel() * (self.latent_dim if self.covariance == "full" else 1)

    def scale_tril(self) -> Tensor:
        """L_y, (classes, latent_dim, latent_dim), with ``covariance = "full"``."""
        return torch.diag_embed(F.softplus(self.raw_scale)) + torch.tril(self.off_diagonal, -1)

    def _family(self, loc: Tensor, y: Optional[Tensor] = None) -> dist.Distribution:
        if self.covariance == "full":
            tril = self.scale_tril()
            if y is not None:
                tril = torch.einsum("...k,kij->...ij", y, tril)
            return dist.MultivariateNormal(loc, scale_tril=tril)
        scale = F.softplus(self.raw_scale)
        return dist.Normal(loc, scale if y is None else y @ scale).to_event(1)

    def given(self, y: Tensor) -> dist.Distribution:
        """p(z|y) for one-hot (or relaxed one-hot) y of shape (..., classes)."""
        return self._family(y @ self.loc, y)

    def forward(self) -> dist.Distribution:
        return dist.MixtureSameFamily(dist.Categorical(logits=self.class_logits), self._family(self.loc))


class _CategoricalDensity:
    """``log_prob(y)`` is the categorical log-density at the (relaxed) one-hot vector y,
    <y, log pi> (see the module docstring)."""

    def log_prob(self, value: Tensor) -> Tensor:
        return (value * torch.log_softmax(self.logits, -1)).sum(-1)


class RelaxedOneHot(_CategoricalDensity, dist.RelaxedOneHotCategorical):
    """Gumbel-softmax y, scored by the categorical density."""


class StraightThroughOneHot(_CategoricalDensity, dist.RelaxedOneHotCategoricalStraightThrough):
    """Hard one-hot y forward, the relaxed sample's gradient backward, scored by the categorical density."""


class MarginalMixture(dist.MixtureSameFamily):
    """sum_y w_y p_y, for evaluation: ``rsample`` draws y, then z (not reparameterized)."""

    def rsample(self, sample_shape=torch.Size()):
        return self.sample(sample_shape)


class Baseline(nn.Module):
    """A neural baseline b(x) for the score function of q(y|x) (Mnih & Gregor, 2014): an MLP
    of the encoder's input, in nats per example, times the data plate's N/B (the scale of the
    downstream cost it predicts, set by the guide)."""

    def __init__(self, features: int, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.scale = 1.0

    def forward(self, u: Tensor) -> Tensor:
        return self.scale * self.net(u.reshape(len(u), -1)).squeeze(-1)
