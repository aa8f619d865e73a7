"""The distributions the likelihoods need beyond Pyro's own: the continuous Bernoulli in its
natural parameter (normalized at every logit), Beta, binomial, beta-binomial and negative
binomial log-densities with their normalizers in float64 (in float32 the lgamma terms
cancel to a mass off by 1e-5 to 1e-3 per feature), the discretized logistic mixture of
PixelCNN++, and a distribution's log-density in the data's own units (:class:`InDataUnits`)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import Tensor

LEVELS = 256  # 8-bit data


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
