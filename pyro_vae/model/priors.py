"""Priors p(z).

Protocol: a :class:`Prior` is built as ``cls(latent_dim, **params)`` and ``prior()``
returns a distribution with event shape ``(latent_dim,)`` and empty batch shape (the
data plate broadcasts it). A prior defined through other parts of the VAE (the
VampPrior uses the encoder) takes what it needs in :meth:`Prior.bind`, which the VAE
calls once with itself.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Literal

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import transforms as T
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from ..errors import NotTraceable
from ..registry import Registry
from ..params import PositiveFloat, count
from .numerics import softplus_inverse
from .posteriors import FlowWidths

PRIORS = Registry("prior")
Components = count(10_000)


@PRIORS.protocol
class Prior(nn.Module):
    """p(z); see the module docstring for the protocol."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, vae) -> None:
        """Called once by the VAE that owns this prior, before training."""

    @property
    def values_per_draw(self) -> int:
        """Values held in memory to score one draw of z (for chunked evaluation)."""
        return self.latent_dim

    def forward(self) -> dist.Distribution:
        raise NotImplementedError


class _Factorized(Prior):
    """A fixed prior, independent across dimensions, centred at 0 with unit scale."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return self.family(self.loc, self.scale).to_event(1)


@PRIORS.register("standard_normal")
class StandardNormalPrior(_Factorized):
    """N(0, I)."""

    family = dist.Normal


@PRIORS.register("learned_normal")
class LearnedNormalPrior(Prior):
    """N(m, diag s^2) with learned mean m and scale s (starting at N(0, I))."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), softplus_inverse(1.0)))

    def forward(self):
        return dist.Normal(self.loc, F.softplus(self.raw_scale)).to_event(1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """sum_k pi_k N(m_k, diag s_k^2): K diagonal Gaussians with learned weights, means, scales."""

    def __init__(self, latent_dim, *, components: Components = 10):
        super().__init__(latent_dim)
        self.components = components
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((components, latent_dim), softplus_inverse(1.0)))

    @property
    def values_per_draw(self) -> int:
        return self.components * self.latent_dim * 4  # the value against every component, and temporaries

    def forward(self):
        components = dist.Normal(self.locs, F.softplus(self.raw_scales)).to_event(1)
        return _Mixture(dist.Categorical(logits=self.logits), components)


class _Mixture(dist.MixtureSameFamily):
    """sum_k pi_k p_k(z), scored against all K components at once.

    For diagonal Gaussian components (the mixture prior; the VampPrior with a
    ``diagonal_normal`` posterior) the K log-densities come from two matrix products,

        log N(z; m_k, s_k) = -1/2 [ z^2 . s_k^-2 - 2 z . m_k s_k^-2 + m_k^2 . s_k^-2 ]
                             - sum_d log s_kd - D/2 log 2 pi,

    (..., D) x (D, K) instead of a (..., K, D) tensor of differences: for a batch of 128
    draws against 500 components in 40 dimensions the broadcast form's elementwise work
    (and its backward) was seven times the rest of the step. The expansion is summed in
    float64 (except on MPS, which has none): its three terms can be large and nearly
    cancel (a small s_k, z far from 0), which float32 would round by far more than the
    broadcast form does. Other components are scored the broadcast way (``_each_component``).

    ``shared_components`` are the K components as built, before any ``expand`` (see there).
    """

    def __init__(self, mixture_distribution, component_distribution, validate_args=None):
        super().__init__(mixture_distribution, component_distribution, validate_args)
        self.shared_components = component_distribution

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_mix = torch.log_softmax(self.mixture_distribution.logits, dim=-1)
        gaussians = _diagonal_gaussians(self.shared_components)
        if gaussians is None:
            return torch.logsumexp(self._each_component(value) + log_mix, dim=-1)
        dtype = value.dtype if value.device.type == "mps" else torch.float64
        v, loc, scale = value.to(dtype), *(t.to(dtype) for t in gaussians)
        precision = scale.pow(-2)
        quadratic = v.square() @ precision.T - 2 * v @ (loc * precision).T + (loc.square() * precision).sum(-1)
        constant = scale.log().sum(-1) + 0.5 * v.shape[-1] * math.log(2 * math.pi)
        # log_mix cast, not promoted: TorchScript's log_softmax backward (jit = true) refuses a float64 gradient
        return torch.logsumexp(log_mix.to(dtype) - constant - 0.5 * quadratic, dim=-1).to(value.dtype)

    def _each_component(self, value):
        """log p_k(z) for every component, (..., K), where the value is expanded to the
        components' batch shape.

        A component whose density at z comes out non-finite counts as density 0 there
        and passes no gradient. This is what a flow's inverse gives far from where its
        component has mass: the VampPrior with an IAF posterior inverts each
        pseudo-input's IAF at every z, and Pyro's stable inverse multiplies by
        1 + exp(-logit), which overflows, so inf - inf makes the loss NaN within a hundred
        steps of MNIST training. Masking the value alone would not do: the backward pass
        through the overflowed branch multiplies a zero by inf. So, on the rare call with
        such a pair, the pair is scored again at a draw of its own component (finite)
        and then masked.
        """
        if get_proxy_mode() is not None:
            raise NotTraceable("the VampPrior over a posterior other than diagonal_normal guards each component's "
                               "density with a test of its value")
        x = self._pad(value)
        components = self.component_distribution
        log_p = components.log_prob(x)
        bad = ~torch.isfinite(log_p)
        if not bad.any():
            return log_p
        if torch.is_grad_enabled():
            inside = bad.reshape(bad.shape + (1,) * self._event_ndims)
            log_p = components.log_prob(torch.where(inside, components.sample().detach(), x))
        return log_p.masked_fill(bad, -math.inf)

    def expand(self, batch_shape, _instance=None):
        """The mixture over a batch (as a data plate asks): the components are expanded
        views, and the K Gaussians they all share are kept as they were, so that scoring
        (and its backward) never touches a (*batch, K, D) tensor."""
        new = super().expand(batch_shape, self._get_checked_instance(_Mixture, _instance))
        new.shared_components = self.shared_components
        return new

    def _pad(self, x):
        x = super()._pad(x)
        event = x.shape[x.dim() - self._event_ndims :]
        batch = torch.broadcast_shapes(x.shape[: x.dim() - self._event_ndims - 1], self.batch_shape)
        return x.expand(batch + self.component_distribution.batch_shape[-1:] + event)


def _diagonal_gaussians(components) -> tuple[Tensor, Tensor] | None:
    """(loc, scale), each (K, D), of K diagonal Gaussian components; None for any others."""
    if (isinstance(components, torch.distributions.Independent) and components.reinterpreted_batch_ndims == 1
            and isinstance(components.base_dist, torch.distributions.Normal) and len(components.batch_shape) == 1):
        return components.base_dist.loc, components.base_dist.scale
    return None


@contextmanager
def _evaluation_mode(*modules: nn.Module):
    """Modules in evaluation mode (dropout off) for the duration, then as they were."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@PRIORS.register("vamp")
class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = 1/K sum_k q(z|u_k), with K learned
    pseudo-inputs u_k passed through the VAE's own encoder and posterior.

    ``pseudo_inputs = "constrained"`` keeps the u_k where the encoder's inputs live,
    clamped to the range of the likelihood's encoder input (the paper's hard-tanh to
    [0, 1] for binary data; [0, inf) for counts; free for real data); ``"free"`` leaves
    them unconstrained. p(z) is a deterministic function of the parameters: the
    pseudo-inputs pass the encoder and posterior in evaluation mode (dropout off), also
    while training, so the prior is not redrawn with every dropout mask.
    """

    def __init__(self, latent_dim, *, components: Components = 500,
                 pseudo_inputs: Literal["constrained", "free"] = "constrained"):
        super().__init__(latent_dim)
        self.components = components
        self.constrained = pseudo_inputs == "constrained"
        # the u_k are a parameter from the start; their shape (components, *data shape) is
        # the data's, known when the VAE binds its prior (torch's lazy-parameter mechanism)
        self.pseudo_inputs = nn.UninitializedParameter()

    def bind(self, vae):
        self._posterior_of = vae.posterior_from_encoder_input  # not a submodule: no double registration
        self._networks = (vae.encoder, vae.posterior, vae.upper)  # a tuple: not registered as submodules either
        self._component_values = 4 * vae.posterior.values_per_draw
        self.bounds = vae.encoder_input_bounds if self.constrained else (None, None)
        start = 0.05 + 0.01 * torch.randn(self.components, *vae.data_shape)
        self.pseudo_inputs.materialize(start.shape, device=start.device, dtype=start.dtype)
        with torch.no_grad():
            self.pseudo_inputs.copy_(start)

    @property
    def values_per_draw(self) -> int:
        return self.components * self._component_values  # each draw is scored under every q(z|u_k)

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k as the encoder sees them (clamped when constrained)."""
        lower, upper = self.bounds
        if lower is None and upper is None:
            return self.pseudo_inputs
        return self.pseudo_inputs.clamp(lower, upper)

    def forward(self):
        with _evaluation_mode(*self._networks):
            q = self._posterior_of(self.inputs())
        weights = dist.Categorical(logits=torch.zeros(self.components, device=self.pseudo_inputs.device))
        return _Mixture(weights, q)


@PRIORS.register("flow")
class FlowPrior(Prior):
    """N(0, I) pushed through ``layers`` learned autoregressive transforms.

    Each layer is used in its inverse (masked autoregressive) direction, so the density
    log p(z) = log N(T^-1(z)) + log|det dT^-1/dz| at any z is one parallel pass;
    sampling is the sequential direction.
    """

    def __init__(
        self,
        latent_dim,
        *,
        transform: Literal["affine_autoregressive", "spline_autoregressive"] = "affine_autoregressive",
        layers: count(8) = 2,
        hidden: FlowWidths = [64],
    ):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        width = [max(w, latent_dim) for w in hidden] or [latent_dim]
        make = T.affine_autoregressive if transform == "affine_autoregressive" else T.spline_autoregressive
        with torch.device("cpu"):  # Pyro builds its masks with .item(): not on the meta device
            self.flows = nn.ModuleList(make(latent_dim, hidden_dims=width) for _ in range(layers))
        self.hidden_values = 2 * layers * (sum(width) + 3 * latent_dim)

    @property
    def values_per_draw(self) -> int:
        return self.latent_dim + self.hidden_values

    def forward(self):
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.inv for flow in self.flows])


@PRIORS.register("student_t")
class StudentTPrior(_Factorized):
    """A factorized Student-t with ``df`` degrees of freedom: heavy-tailed."""

    def __init__(self, latent_dim, *, df: PositiveFloat = 3.0):
        super().__init__(latent_dim)
        self.register_buffer("df", torch.full((latent_dim,), float(df)))

    def family(self, loc, scale):
        return dist.StudentT(self.df, loc, scale)


@PRIORS.register("laplace")
class LaplacePrior(_Factorized):
    """A factorized Laplace(0, 1): heavy-tailed and sparsity-inducing."""

    family = dist.Laplace
