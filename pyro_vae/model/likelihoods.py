"""Likelihoods p(x|z): the decoder's output -> a distribution over one example.

Protocol: a :class:`Likelihood` is built as ``cls(data_shape, **params)``; it says how
many decoder outputs it needs per feature (``outputs``), which values it supports
(``domain``, checked against the data before training), and maps a decoder output of
shape ``(*batch, outputs, *data_shape)`` to a distribution with batch shape ``batch``
and event shape ``data_shape``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..errors import SpecError
from ..registry import Registry
from ..params import PositiveFloat, count
from .distributions import (LEVELS, Beta, BetaBinomial, Binomial, ContinuousBernoulli, DiscretizedLogisticMixture,
                            InDataUnits, NegativeBinomial)
from .domains import COUNTS, OPEN_UNIT, REAL, UNIT, Domain, Values, levels_domain
from .numerics import softplus_inverse

if TYPE_CHECKING:
    from ..data.statistics import DataStatistics

LIKELIHOODS = Registry("likelihood")
DEFAULT_SCALE = 0.1  # a fixed location-scale likelihood's scale when none is given


def _in_data_units(likelihood: "Likelihood", inputs, distribution):
    """Every likelihood's forward hook: its distribution in the data's own units (see use_data_units)."""
    return distribution if not likelihood.log_jacobian else InDataUnits(distribution, likelihood.log_jacobian)


@LIKELIHOODS.protocol
class Likelihood(nn.Module):
    """p(x|z) from the decoder's output; see the module docstring for the protocol."""

    outputs: int = 1
    domain: Domain = REAL
    # the range of encoder_input(x) over the support: (lower, upper), None where unbounded
    encoder_input_bounds: tuple[float | None, float | None] = (None, None)
    # models integer values as they are (levels, counts): data.normalize = "auto" keeps them undivided
    raw_integers: bool = False
    # a density (of real values) rather than a mass function: reported in the data's own units
    density: bool = True

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.log_jacobian = 0.0
        self.register_forward_hook(_in_data_units)

    def use_data_units(self, log_jacobian: float) -> None:
        """Report the density of the data in their own units: ``log_jacobian`` = log |det
        d(prepared x)/d(given x)| (a standardization's -sum_j log sd_j) is added to every
        log p(x|z), a constant that leaves every gradient as it is. Mass functions ignore it."""
        self.log_jacobian = float(log_jacobian) if self.density else 0.0

    @property
    def domain_bounds(self) -> tuple[float | None, float | None]:
        return self.domain.bounds

    @property
    def event_dim(self) -> int:
        return len(self.data_shape)

    def split(self, out: Tensor) -> tuple[Tensor, ...]:
        """``(*batch, outputs, *data_shape)`` -> ``outputs`` tensors of ``(*batch, *data_shape)``."""
        return out.unbind(-self.event_dim - 1)

    def forward(self, out: Tensor) -> dist.Distribution:
        raise NotImplementedError

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder sees of x (counts and 8-bit levels are rescaled)."""
        return x

    def check(self, x: Tensor, where: str) -> str | None:
        """A one-line problem with data ``x`` for this likelihood, or None."""
        if not torch.isfinite(x).all():
            return f"{where} contains NaN or infinite values; clean the data before training"
        inside = self.domain.contains(x)
        if inside.all():
            return None
        outside = int((~inside).sum())
        values = Values.of(x)
        return (
            f"{where} has values outside the support of the {self.kind} likelihood "
            f"({self.domain.description}; the data span {values.low:g}..{values.high:g}, "
            f"{outside} values outside): {self.domain.fix(values)}"
        )

    def mean(self, out: Tensor, **context) -> Tensor:
        """E[x|z], for reconstructions and decoded samples (``context``: see VAE.p_x)."""
        return self(out, **context).mean

    def initialize_from_data(self, statistics: "DataStatistics") -> None:
        """Start parameters from the training data's statistics (before training only;
        a trained run's weights replace them). Nothing by default."""


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Bernoulli from logits; values in [0, 1] that are not 0/1 act as soft targets (cross-entropy).

    ``probability_floor`` = eps > 0 keeps every pixel's probability in [eps, 1 - eps]: the
    logits are clamped to +-log((1 - eps) / eps), still a Bernoulli, so log p(x) stays a
    log-probability, each pixel's term bounded by -log eps. The clamp passes no gradient
    beyond it: the decoder stops sharpening pixels it already predicts to within eps, and a
    confidently wrong pixel of a held-out image costs at most -log eps (11.5 nats at 1e-5).
    Tomczak & Welling's VampPrior code clamps at 1e-5 (``utils/distributions.py``,
    ``log_Bernoulli``). On Caltech 101 Silhouettes it left the VampPrior's best epoch and
    log p(x) as they were (-135.15 against -135.14 unclamped; REPRODUCTION.md, row 7)."""

    domain = UNIT
    encoder_input_bounds = (0.0, 1.0)
    density = False

    def __init__(self, data_shape, *, probability_floor: Annotated[float, Field(ge=0, lt=0.5)] = 0.0):
        super().__init__(data_shape)
        self.probability_floor = probability_floor
        self.max_logit = math.log((1 - probability_floor) / probability_floor) if probability_floor > 0 else None

    def logits(self, out: Tensor) -> Tensor:
        (logits,) = self.split(out)
        return logits if self.max_logit is None else logits.clamp(-self.max_logit, self.max_logit)

    def forward(self, out):
        # validate_args=False: grayscale values in [0, 1] are allowed as soft targets
        return dist.Bernoulli(logits=self.logits(out), validate_args=False).to_event(self.event_dim)

    def mean(self, out):
        return torch.sigmoid(self.logits(out))


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): a normalized density on [0, 1]."""

    domain = UNIT
    encoder_input_bounds = (0.0, 1.0)

    def forward(self, out):
        (logits,) = self.split(out)
        return ContinuousBernoulli(logits).to_event(self.event_dim)


ScaleMode = Literal["fixed", "shared", "per_feature", "decoder"]


class _LocationScale(Likelihood):
    """A location-scale family whose scale is fixed, one learned value, learned per
    feature, or predicted by the decoder (heteroscedastic).

    scale = softplus(raw) + min_scale. A fixed scale is ``initial_scale`` exactly, and
    a learned one starts there: raw = softplus^-1(initial_scale - min_scale), so
    ``initial_scale`` must exceed ``min_scale``. Without ``initial_scale`` a fixed scale
    is 0.1, and a learned one starts from the training data's spread
    (:meth:`initialize_from_data`: the sd per feature, or pooled for ``shared``)."""

    def __init__(
        self,
        data_shape,
        *,
        scale: ScaleMode = "per_feature",
        initial_scale: Optional[PositiveFloat] = None,
        min_scale: Annotated[float, Field(ge=0)] = 1e-3,
    ):
        super().__init__(data_shape)
        self.from_data = initial_scale is None and scale in ("shared", "per_feature")
        initial_scale = DEFAULT_SCALE if initial_scale is None else initial_scale
        if scale != "decoder" and initial_scale <= min_scale:
            raise SpecError(
                f"initial_scale = {initial_scale:g} must be larger than min_scale = {min_scale:g} (the scale is "
                "softplus(raw) + min_scale); raise initial_scale or lower min_scale"
            )
        self.scale_mode = scale
        self.min_scale = min_scale
        self.outputs = 2 if scale == "decoder" else 1
        start = softplus_inverse(initial_scale - min_scale) if scale != "decoder" else 0.0
        raw = torch.full(() if scale in ("fixed", "shared") else self.data_shape, start)
        if scale == "fixed":
            self.register_buffer("raw_scale", raw)
        elif scale != "decoder":
            self.raw_scale = nn.Parameter(raw)

    def initialize_from_data(self, statistics: "DataStatistics") -> None:
        """A learned scale without ``initial_scale`` starts at the data's sd (per feature, or
        pooled), floored at 5% of the pooled sd (constant features) and above min_scale."""
        if not self.from_data:
            return
        floor = max(0.05 * statistics.pooled_sd, 2 * self.min_scale + 1e-6)
        start = torch.full_like(self.raw_scale, statistics.pooled_sd) if self.scale_mode == "shared" else statistics.sd
        start = start.reshape(self.raw_scale.shape).to(self.raw_scale).clamp(min=floor)
        with torch.no_grad():
            self.raw_scale.copy_(softplus_inverse(start - self.min_scale))

    def loc_scale(self, out: Tensor) -> tuple[Tensor, Tensor]:
        parts = self.split(out)
        raw = parts[1] if self.scale_mode == "decoder" else self.raw_scale
        return parts[0], F.softplus(raw) + self.min_scale

    def forward(self, out):
        loc, scale = self.loc_scale(out)
        return self.family(loc, scale).to_event(self.event_dim)

    def mean(self, out):
        return self.loc_scale(out)[0]


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScale):
    """Gaussian N(mu(z), s^2), s fixed, shared, per feature or from the decoder."""

    @staticmethod
    def family(loc, scale):
        return dist.Normal(loc, scale)


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScale):
    """Laplace(mu(z), b): heavier tails than the Gaussian, robust to outlying pixels."""

    @staticmethod
    def family(loc, scale):
        return dist.Laplace(loc, scale)


@LIKELIHOODS.register("student_t")
class StudentTLikelihood(_LocationScale):
    """Student-t with ``df`` degrees of freedom around mu(z), scale s."""

    def __init__(
        self,
        data_shape,
        *,
        df: PositiveFloat = 3.0,
        scale: ScaleMode = "per_feature",
        initial_scale: Optional[PositiveFloat] = None,
        min_scale: Annotated[float, Field(ge=0)] = 1e-3,
    ):
        super().__init__(data_shape, scale=scale, initial_scale=initial_scale, min_scale=min_scale)
        self.df = df

    def family(self, loc, scale):
        return dist.StudentT(self.df, loc, scale)


@LIKELIHOODS.register("beta")
class BetaLikelihood(Likelihood):
    """Beta(a(z), b(z)) for data strictly inside (0, 1)."""

    outputs = 2
    domain = OPEN_UNIT
    encoder_input_bounds = (0.0, 1.0)

    def forward(self, out):
        a, b = (F.softplus(p) + 1e-4 for p in self.split(out))
        return Beta(a, b).to_event(self.event_dim)


LevelsParam = Optional[Annotated[int, Field(ge=1, le=65_535)]]


class _Levels(Likelihood):
    """A probability mass function over integer levels 0..L. ``levels`` = L, the largest
    level; unset, training takes it from the data (the source's known maximum: 16 for the
    digits, 255 for 8-bit integer arrays; else the largest value in any split) and records
    it in the run's spec. Built without data it is 255 (8-bit). The encoder sees x / L."""

    domain = levels_domain(LEVELS - 1)
    encoder_input_bounds = (0.0, 1.0)
    raw_integers = True
    density = False

    def __init__(self, data_shape, *, levels: LevelsParam = None):
        super().__init__(data_shape)
        self.levels = LEVELS - 1 if levels is None else levels
        self.domain = levels_domain(self.levels)

    def encoder_input(self, x):
        return x / self.levels


@LIKELIHOODS.register("binomial")
class BinomialLikelihood(_Levels):
    """Binomial(L, sigma(decoder output)) per feature: a pmf over the levels 0..L with one
    decoder output per feature, mean L p and variance L p (1 - p)."""

    def forward(self, out):
        (logits,) = self.split(out)
        return Binomial(self.levels, logits=logits).to_event(self.event_dim)

    def mean(self, out):
        return self.levels * torch.sigmoid(self.split(out)[0])


@LIKELIHOODS.register("beta_binomial")
class BetaBinomialLikelihood(_Levels):
    """Beta-binomial over the levels 0..L: mean L p with p = sigma(decoder output), and a
    learned concentration c per feature (a = p c, b = (1 - p) c, each at least 1e-8): variance L p (1 - p)
    (L + c) / (1 + c), wider than the binomial's for levels that vary more than a binomial
    allows (c -> infinity is the binomial). One decoder output per feature."""

    def __init__(self, data_shape, *, levels: LevelsParam = None, initial_concentration: PositiveFloat = 10.0):
        super().__init__(data_shape, levels=levels)
        self.raw_concentration = nn.Parameter(torch.full(self.data_shape, softplus_inverse(initial_concentration)))

    def forward(self, out):
        (logits,) = self.split(out)
        c = F.softplus(self.raw_concentration) + 1e-4
        # floored at 1e-8: at |logit| > ~88 float32 rounds c sigma(-|logit|) to 0
        a, b = (c * torch.sigmoid(logits)).clamp(min=1e-8), (c * torch.sigmoid(-logits)).clamp(min=1e-8)
        return BetaBinomial(a, b, self.levels).to_event(self.event_dim)

    def mean(self, out):
        return self.levels * torch.sigmoid(self.split(out)[0])


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(_Levels):
    """An (L + 1)-way categorical per feature over the levels 0..L (L = 255: 8-bit data)."""

    def __init__(self, data_shape, *, levels: LevelsParam = None):
        super().__init__(data_shape, levels=levels)
        self.outputs = self.levels + 1

    def logits(self, out: Tensor) -> Tensor:
        return out.movedim(-self.event_dim - 1, -1)

    def forward(self, out):
        return dist.Categorical(logits=self.logits(out)).to_event(self.event_dim)

    def mean(self, out):
        probs = torch.softmax(self.logits(out), -1)
        return probs @ torch.arange(self.levels + 1, dtype=probs.dtype, device=probs.device)


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogisticLikelihood(_Levels):
    """A mixture of discretized logistics per feature over the levels 0..L, as in PixelCNN++ (L = 255)."""

    def __init__(self, data_shape, *, components: count(64) = 5, levels: LevelsParam = None):
        super().__init__(data_shape, levels=levels)
        self.components = components
        self.outputs = 3 * components

    def forward(self, out):
        k = self.components
        params = out.movedim(-self.event_dim - 1, -1)
        logits, loc, raw_scale = params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]
        scale = F.softplus(raw_scale) + 1e-3
        return DiscretizedLogisticMixture(logits, torch.tanh(loc), scale, self.levels).to_event(self.event_dim)


class _Counts(Likelihood):
    """Counts: the encoder sees log(1 + x). With ``library_size = true`` the mean is
    l * softmax(decoder output) over the features, where l is the example's observed
    total count (its library size, as in scVI; Lopez et al., 2018); decoded samples
    without an x use the training set's mean total."""

    domain = COUNTS
    encoder_input_bounds = (0.0, None)
    raw_integers = True
    density = False

    def __init__(self, data_shape, *, library_size: bool = False):
        super().__init__(data_shape)
        self.library_size = library_size
        self.register_buffer("mean_library", torch.tensor(1.0))

    def encoder_input(self, x):
        return torch.log1p(x)

    def observed_library(self, x: Tensor) -> Tensor:
        """l = sum of x over the features, shape x.shape[:-event_dim]."""
        return x.flatten(-self.event_dim).sum(-1)

    def initialize_from_data(self, statistics: "DataStatistics") -> None:
        with torch.no_grad():
            self.mean_library.fill_(max(statistics.mean_total, 1e-8))

    def rate(self, raw: Tensor, library: Tensor | None = None) -> Tensor:
        """The mean of each count: softplus(raw), or l * softmax(raw) with a library size."""
        if not self.library_size:
            return F.softplus(raw) + 1e-8
        library = self.mean_library if library is None else library
        shares = torch.softmax(raw.flatten(-self.event_dim), -1).view_as(raw)
        return shares * library.reshape(library.shape + (1,) * self.event_dim) + 1e-8


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(_Counts):
    """Poisson counts with rate softplus(decoder output), or l * softmax(decoder output)."""

    def forward(self, out, library=None):
        (raw,) = self.split(out)
        return dist.Poisson(self.rate(raw, library)).to_event(self.event_dim)


class _Dispersed(_Counts):
    """Counts with mean from the decoder and a learned inverse dispersion theta per feature."""

    def __init__(self, data_shape, *, initial_dispersion: PositiveFloat = 1.0, library_size: bool = False):
        super().__init__(data_shape, library_size=library_size)
        self.raw_theta = nn.Parameter(torch.full(self.data_shape, softplus_inverse(initial_dispersion)))

    def mean_theta(self, raw_mean: Tensor, library: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.rate(raw_mean, library), F.softplus(self.raw_theta) + 1e-8


@LIKELIHOODS.register("negative_binomial")
class NegativeBinomialLikelihood(_Dispersed):
    """Negative binomial NB(mean mu(z), inverse dispersion theta): Var = mu + mu^2 / theta."""

    def forward(self, out, library=None):
        (raw_mean,) = self.split(out)
        mu, theta = self.mean_theta(raw_mean, library)
        return NegativeBinomial(total_count=theta, logits=mu.log() - theta.log()).to_event(self.event_dim)


@LIKELIHOODS.register("zinb")
class ZeroInflatedNegativeBinomialLikelihood(_Dispersed):
    """Zero-inflated negative binomial (as in scVI): a structural zero with probability
    sigma(g(z)), else NB(mu(z), theta)."""

    outputs = 2

    def forward(self, out, library=None):
        raw_mean, gate_logits = self.split(out)
        mu, theta = self.mean_theta(raw_mean, library)
        base = NegativeBinomial(total_count=theta, logits=mu.log() - theta.log())
        return dist.ZeroInflatedDistribution(base, gate_logits=gate_logits).to_event(self.event_dim)
