"""Likelihoods p(x|z): the decoder's output -> a distribution over one example.

Protocol: a :class:`Likelihood` is built as ``cls(data_shape, **params)``; it says how
many decoder outputs it needs per feature (``outputs``), which values it supports
(``domain``, checked against the data before training), and maps a decoder output of
shape ``(*batch, outputs, *data_shape)`` to a distribution with batch shape ``batch``
and event shape ``data_shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated, Callable, Literal, Optional

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pydantic import Field
from pyro.distributions import constraints
from torch import Tensor, nn

from ..errors import SpecError
from ..registry import Registry
from ..params import PositiveFloat, count
from .numerics import softplus_inverse

if TYPE_CHECKING:
    from ..data.statistics import DataStatistics

LIKELIHOODS = Registry("likelihood")
LEVELS = 256  # 8-bit data
DEFAULT_SCALE = 0.1  # a fixed location-scale likelihood's scale when none is given


@dataclass(frozen=True)
class Domain:
    """The values a likelihood supports, and the fix to suggest for data outside them,
    chosen from what the data actually hold (see :func:`describe_values`)."""

    description: str
    contains: Callable[[Tensor], Tensor]
    fix: Callable[["Values"], str] = lambda values: ""
    bounds: tuple[float | None, float | None] = (None, None)  # (lowest, highest) value, None where unbounded


def _is_integer(x: Tensor) -> Tensor:
    return x == torch.round(x)


@dataclass(frozen=True)
class Values:
    """What data hold, as far as choosing a likelihood goes."""

    low: float
    high: float
    integers: bool  # every value a whole number

    @classmethod
    def of(cls, x: Tensor) -> "Values":
        return cls(x.min().item(), x.max().item(), bool(_is_integer(x).all()))


REAL_KINDS = "a likelihood for real values (gaussian, laplace, student_t; the shipped model gaussian_per_feature has one)"
COUNT_KINDS = "a likelihood for counts (poisson, negative_binomial, zinb)"


def _fix_unit(v: Values) -> str:
    if v.integers and v.low >= 0 and v.high <= 255:
        return (f"the data are whole numbers 0..{v.high:g}: rescale them into [0, 1], or store them as an integer "
                f"array and set data.normalize = true (it divides 8-bit levels by 255), or choose {COUNT_KINDS}")
    if v.integers and v.low >= 0:
        return f"the data are whole numbers 0..{v.high:g}, counts: choose {COUNT_KINDS}, or rescale them into [0, 1]"
    if v.low < 0:
        return f"the data are real values, negative ones included: choose {REAL_KINDS}, or rescale them into [0, 1]"
    return f"the data are real values above 1: choose {REAL_KINDS}, or rescale them into [0, 1]"


def _fix_open_unit(v: Values) -> str:
    if 0 <= v.low and v.high <= 1:
        return "the data touch 0 or 1: use continuous_bernoulli, or squeeze the data into (0, 1)"
    return f"choose {REAL_KINDS} for data outside [0, 1], or rescale them into (0, 1)"


def _fix_levels(levels: int, v: Values) -> str:
    if not v.integers and 0 <= v.low and v.high <= 1:
        return "the data look divided into [0, 1]: set data.normalize = false to keep the integer levels"
    if v.integers and v.low >= 0:
        return (f"whole numbers beyond 0..{levels}: leave model.likelihood.levels unset (it is taken from the training "
                f"data), or choose {COUNT_KINDS}")
    if v.integers:
        return f"levels are never negative: choose {REAL_KINDS}"
    return f"the data are not whole levels: choose {REAL_KINDS}, or continuous_bernoulli for data in [0, 1]"


def levels_domain(levels: int) -> Domain:
    """Integer levels 0..``levels``."""
    return Domain(f"integer levels 0..{levels}", lambda x: (x >= 0) & (x <= levels) & _is_integer(x),
                  partial(_fix_levels, levels), (0.0, float(levels)))


def _fix_counts(v: Values) -> str:
    if v.low < 0:
        return f"counts are never negative: choose {REAL_KINDS}"
    if v.high <= 1:
        return ("the data are fractions in [0, 1], not whole counts: if the file stores counts, set data.normalize = "
                "false (or auto) so they are not divided; for data in [0, 1] choose bernoulli or continuous_bernoulli")
    return f"the data are non-negative but not whole numbers: round them if they are counts, or choose {REAL_KINDS}"


UNIT = Domain("values in [0, 1]", lambda x: (x >= 0) & (x <= 1), _fix_unit, (0.0, 1.0))
OPEN_UNIT = Domain("values strictly inside (0, 1)", lambda x: (x > 0) & (x < 1), _fix_open_unit, (0.0, 1.0))
REAL = Domain("finite real values", lambda x: torch.ones_like(x, dtype=torch.bool))
COUNTS = Domain("non-negative integer counts", lambda x: (x >= 0) & _is_integer(x), _fix_counts, (0.0, None))


class InDataUnits(dist.TorchDistribution):
    """A distribution of prepared data whose log-density is expressed per unit of the data as
    given: log p(x) = log p_prepared(x) + log_jacobian (values, samples and moments stay those
    of the prepared data)."""

    arg_constraints = {}

    def __init__(self, base: dist.Distribution, log_jacobian: float):
        self.base_dist, self.log_jacobian = base, log_jacobian
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    @property
    def has_rsample(self):
        return self.base_dist.has_rsample

    def expand(self, batch_shape, _instance=None):
        return InDataUnits(self.base_dist.expand(batch_shape), self.log_jacobian)

    def log_prob(self, value):
        return self.base_dist.log_prob(value) + self.log_jacobian

    def sample(self, sample_shape=torch.Size()):
        return self.base_dist.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()):
        return self.base_dist.rsample(sample_shape)

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance


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
    """Bernoulli from logits; values in [0, 1] that are not 0/1 act as soft targets (cross-entropy)."""

    domain = UNIT
    encoder_input_bounds = (0.0, 1.0)
    density = False

    def forward(self, out):
        # validate_args=False: grayscale values in [0, 1] are allowed as soft targets
        (logits,) = self.split(out)
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(self.event_dim)

    def mean(self, out):
        return torch.sigmoid(self.split(out)[0])


class ContinuousBernoulli(dist.TorchDistribution):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) in its natural parameter
    eta (the logit of lambda): an exponential family on [0, 1] with

        p(x|eta) = eta e^(eta x) / (e^eta - 1),
        log p(x|eta) = eta x + log|eta| - log|expm1(eta)|
                     = eta x - max(eta, 0) + f(|eta|),  f(a) = log a - log(-expm1(-a)),

    with f(a) = a/2 - a^2/24 + a^4/2880 - ... near a = 0 (where f -> 0: the uniform).
    This form is normalized at every eta. ``torch.distributions.ContinuousBernoulli``
    computes the normalizer from probabilities clamped to [eps, 1 - eps] but the
    exponent from the raw logits, so in float32 its density integrates to 0.797 at
    logit +-20 and 0.199 at +-80 (unnormalized past |logit| ~ 15.9).

    Mean: E[x] = 1/(1 - e^-eta) - 1/eta (1/2 + eta/12 - eta^3/720 near 0); samples by
    the inverse CDF x = log1p(u expm1(eta)) / eta, reparameterized.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True
    SERIES = 1e-2  # |eta| below which f uses its series
    MEAN_SERIES = 1e-1  # |eta| below which the mean uses its series

    def __init__(self, logits: Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return ContinuousBernoulli(self.logits.expand(batch_shape))

    def log_normalizer(self) -> Tensor:
        """log(eta / expm1(eta)), the log of the density's normalizing constant."""
        eta = self.logits
        a = eta.abs()
        small = a < self.SERIES
        safe = torch.where(small, torch.ones_like(a), a)
        f = torch.where(small, a / 2 - a**2 / 24 + a**4 / 2880, torch.log(safe) - torch.log(-torch.expm1(-safe)))
        return f - eta.clamp(min=0)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self.logits * value + self.log_normalizer()

    @property
    def mean(self):
        eta = self.logits
        small = eta.abs() < self.MEAN_SERIES
        safe = torch.where(small, torch.ones_like(eta), eta)
        return torch.where(small, 0.5 + eta / 12 - eta**3 / 720, 1 / (-torch.expm1(-safe)) - 1 / safe)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(1e-7, 1 - 1e-7)
        eta = self.logits.expand(shape)
        small = eta.abs() < self.SERIES
        safe = torch.where(small, torch.ones_like(eta), eta)
        # eta > 0: x = 1 + log(u + (1 - u) e^-eta) / eta, which does not overflow
        positive = 1 + torch.log(u + (1 - u) * torch.exp(-safe.clamp(min=0))) / safe
        negative = torch.log1p(u * torch.expm1(safe.clamp(max=0))) / safe
        x = torch.where(safe > 0, positive, negative)
        return torch.where(small, u + eta * u * (1 - u) / 2, x).clamp(0, 1)


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


class Beta(dist.Beta):
    """Beta(a, b) whose log-normalizer lgamma(a + b) - lgamma(a) - lgamma(b) is computed in
    float64: in float32 those terms (~360 and ~860 at a = b = 100) cancel to a mass off by
    1e-4 per feature, which a 784-pixel image sums to 0.08 nats."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration1, self.concentration0
        log_norm = torch.lgamma((a + b).double()) - torch.lgamma(a.double()) - torch.lgamma(b.double())
        return torch.xlogy(a - 1, value) + (b - 1) * torch.log1p(-value) + log_norm.to(a.dtype)


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


class Binomial(dist.Binomial):
    """The binomial from logits l: log p(k) = k l - n softplus(l) + log C(n, k), computed in
    float64 and returned in the logits' dtype: in float32 the terms (~5000 at n = 255, l = 20;
    the coefficient's lgamma terms ~1160) cancel to a mass off by 3e-5 per feature."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        n, k, logits = self.total_count.double(), value.double(), self.logits.double()
        log_choose = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        return (k * logits - n * F.softplus(logits) + log_choose).to(self.logits.dtype)


@LIKELIHOODS.register("binomial")
class BinomialLikelihood(_Levels):
    """Binomial(L, sigma(decoder output)) per feature: a pmf over the levels 0..L with one
    decoder output per feature, mean L p and variance L p (1 - p)."""

    def forward(self, out):
        (logits,) = self.split(out)
        return Binomial(self.levels, logits=logits).to_event(self.event_dim)

    def mean(self, out):
        return self.levels * torch.sigmoid(self.split(out)[0])


class BetaBinomial(dist.TorchDistribution):
    """The beta-binomial: k ~ Binomial(n, p), p ~ Beta(a, b). Its log-pmf
    log C(n, k) + log B(k + a, n - k + b) - log B(a, b) is computed in float64 (the lgamma
    terms cancel) and returned in the parameters' dtype. Mean n a / (a + b)."""

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}

    def __init__(self, concentration1: Tensor, concentration0: Tensor, total_count: int, validate_args=None):
        self.concentration1, self.concentration0 = torch.broadcast_tensors(concentration1, concentration0)
        self.total_count = total_count
        super().__init__(self.concentration1.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.total_count)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return BetaBinomial(self.concentration1.expand(shape), self.concentration0.expand(shape), self.total_count)

    def log_prob(self, value):
        n, k = float(self.total_count), value.double()
        a, b = self.concentration1.double(), self.concentration0.double()
        log_choose = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        log_beta_ratio = (torch.lgamma(k + a) + torch.lgamma(n - k + b) - torch.lgamma(n + a + b)
                          - torch.lgamma(a) - torch.lgamma(b) + torch.lgamma(a + b))
        return (log_choose + log_beta_ratio).to(self.concentration1.dtype)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            p = dist.Beta(self.concentration1, self.concentration0).sample(sample_shape)
            return dist.Binomial(self.total_count, probs=p).sample()

    @property
    def mean(self):
        return self.total_count * self.concentration1 / (self.concentration1 + self.concentration0)


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


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """Mixture of logistics discretized to the levels 0..L (Salimans et al., 2017, PixelCNN++,
    where L = 255).

    x in {0..L} is rescaled to x' = 2 x / L - 1 in [-1, 1] with bin half-width 1/L;
    P(x) = sum_k pi_k [sigma((x' + 1/L - mu_k)/s_k) - sigma((x' - 1/L - mu_k)/s_k)],
    with the edge bins x = 0 and x = L taking all mass below and above.
    Components are on the last dimension of the parameters.
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "scale": constraints.positive}

    def __init__(self, logits, loc, scale, levels: int = LEVELS - 1, validate_args=None):
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        self.levels = levels
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.levels)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        return DiscretizedLogisticMixture(
            self.logits.expand(shape), self.loc.expand(shape), self.scale.expand(shape), self.levels
        )

    def log_prob(self, value):
        top = self.levels
        x = (2 * value / top - 1).unsqueeze(-1)
        half_bin = 1.0 / top
        inv_s = 1 / self.scale
        upper = (x + half_bin - self.loc) * inv_s
        lower = (x - half_bin - self.loc) * inv_s
        log_cdf_upper = F.logsigmoid(upper)  # log P(X <= upper edge): the bin at 0
        log_sf_lower = -F.softplus(lower)  # log P(X >= lower edge): the bin at L
        # log(sigma(u) - sigma(l)) = log sigma(u) + log(1 - exp(log sigma(l) - log sigma(u)))
        log_mass = log_cdf_upper + torch.log(
            -torch.expm1((F.logsigmoid(lower) - log_cdf_upper).clamp(max=-1e-12))
        )
        # far in the tails the difference underflows: use the density times the bin width
        mid = (x - self.loc) * inv_s
        log_density = mid - 2 * F.softplus(mid) - torch.log(self.scale) + math.log(2 * half_bin)
        log_mass = torch.where(log_mass > -12.0, log_mass, log_density)
        log_p = torch.where(x < -1 + half_bin, log_cdf_upper, torch.where(x > 1 - half_bin, log_sf_lower, log_mass))
        return torch.logsumexp(log_p + torch.log_softmax(self.logits, -1), -1)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            loc = self.loc.expand(shape + self.loc.shape[-1:]).gather(-1, k).squeeze(-1)
            scale = self.scale.expand(shape + self.scale.shape[-1:]).gather(-1, k).squeeze(-1)
            u = torch.rand(shape, device=loc.device).clamp(1e-5, 1 - 1e-5)
            x = loc + scale * (torch.log(u) - torch.log1p(-u))
            return torch.round((x.clamp(-1, 1) + 1) * self.levels / 2)

    @property
    def mean(self):
        """E[x] = sum_l l P(l) = sum_{l=0}^{L-1} P(X > l) = L - sum_{l=0}^{L-1} CDF(l), with
        CDF(l) = sum_k pi_k sigma((x'_l + 1/L - mu_k) / s_k): the edge bins and the
        clamping included, exactly."""
        top = self.levels
        weights = torch.softmax(self.logits, -1)
        levels = torch.arange(top, dtype=self.loc.dtype, device=self.loc.device)
        upper = levels * 2 / top - 1 + 1.0 / top  # the upper edge of bin l, l = 0..L-1
        cdf_sum = 0.0
        for k in range(weights.shape[-1]):  # one component at a time: (..., L) values, not (..., L, K)
            loc, scale = self.loc[..., k : k + 1], self.scale[..., k : k + 1]
            cdf_sum = cdf_sum + weights[..., k] * torch.sigmoid((upper - loc) / scale).sum(-1)
        return top - cdf_sum


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


class NegativeBinomial(dist.NegativeBinomial):
    """The negative binomial with its log-normalizer lgamma(k + theta) - lgamma(theta) -
    lgamma(k + 1) computed in float64: in float32, at a large inverse dispersion theta (the
    Poisson limit, theta = 1e4: lgamma ~ 82,000) the terms cancel to a mass off by 1.5e-3
    per feature. The rest, theta log sigma(-l) + k log sigma(l), is accurate in float32."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_unnormalized = self.total_count * F.logsigmoid(-self.logits) + value * F.logsigmoid(self.logits)
        k, theta = value.double(), self.total_count.double()
        log_norm = torch.lgamma(k + theta) - torch.lgamma(theta) - torch.lgamma(k + 1)
        return log_unnormalized + log_norm.to(log_unnormalized.dtype)


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
