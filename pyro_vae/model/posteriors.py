"""Posterior families q(z|x): the encoder's output -> a distribution over z.

Protocol: a :class:`Posterior` is built as ``cls(latent_dim, **params)``, says how many
encoder outputs it needs (``encoder_outputs``), and maps an encoder output of shape
``(*batch, encoder_outputs)`` to a reparameterized distribution with batch shape
``batch`` and event shape ``(latent_dim,)``. Its parameters must be its own (sub)modules'
parameters: :meth:`Posterior.stopped_log_prob` detaches exactly those.
"""

from __future__ import annotations

from typing import Annotated

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pydantic import Field
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

from ..registry import Registry
from ..params import count

POSTERIORS = Registry("posterior")
MIN_SCALE = 1e-4
FlowWidths = Annotated[list[count(1024)], Field(max_length=3)]


@POSTERIORS.protocol
class Posterior(nn.Module):
    """q(z|x) from the encoder's output; see the module docstring for the protocol."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    encoder_outputs: int

    @property
    def values_per_draw(self) -> int:
        """Values held in memory to draw and score one z (for chunked evaluation)."""
        return 2 * self.latent_dim

    def forward(self, h: Tensor) -> dist.Distribution:
        raise NotImplementedError

    def stopped_log_prob(self, h: Tensor, z: Tensor, detach_input: bool = True) -> Tensor:
        """log q(z|h) with h and every parameter of this posterior detached, so that its
        gradient reaches z only: the path derivative of STL (Roeder et al., 2017) and DReG
        (Tucker et al., 2019). With ``detach_input = False`` h stays live: a layer whose
        encoder reads another layer's z passes h computed with detached parameters, so the
        gradient reaches that z as well.

        The whole log-density is evaluated inside one ``torch.func.functional_call``: a
        distribution that runs networks inside ``log_prob`` (an IAF's autoregressive
        networks, a user's flow) sees the detached parameters too, which swapping them
        in only while q is built would miss. A flow is inverted afresh here (no cached
        forward pass), so it must have an inverse: z goes in as a fresh view, because a
        transform kept on the module with ``cache_size=1`` would otherwise answer
        ``inv(z)`` from the cache filled when z was drawn, with the live parameters.
        """
        detached = {f"posterior.{name}": p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(_LogDensity(self), detached, (h.detach() if detach_input else h, z.view_as(z)))

    def loc_scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The diagonal Gaussian read off the first 2 * latent_dim encoder outputs."""
        d = self.latent_dim
        return h[..., :d], F.softplus(h[..., d : 2 * d]) + MIN_SCALE


class _LogDensity(nn.Module):
    """(h, z) -> log q(z|h): a whole log-density as one module call, for functional_call."""

    def __init__(self, posterior: Posterior):
        super().__init__()
        self.posterior = posterior

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        return self.posterior(h).log_prob(z)


@POSTERIORS.register("diagonal_normal")
class DiagonalNormalPosterior(Posterior):
    """N(mu(x), diag sigma(x)^2), sigma = softplus(.) (Kingma & Welling, 2014)."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.encoder_outputs = 2 * latent_dim

    def forward(self, h):
        loc, scale = self.loc_scale(h)
        return dist.Normal(loc, scale).to_event(1)


@POSTERIORS.register("low_rank_normal")
class LowRankNormalPosterior(Posterior):
    """N(mu(x), W(x) W(x)^T + diag d(x)): a diagonal plus a rank-r factor."""

    def __init__(self, latent_dim, *, rank: count(64) = 2):
        super().__init__(latent_dim)
        self.rank = rank
        self.encoder_outputs = latent_dim * (2 + rank)

    @property
    def values_per_draw(self) -> int:
        return self.latent_dim * (2 + self.rank)

    def forward(self, h):
        d = self.latent_dim
        loc, scale = self.loc_scale(h)
        factor = h[..., 2 * d :].reshape(*h.shape[:-1], d, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, scale.square())


@POSTERIORS.register("iaf")
class IAFPosterior(Posterior):
    """A diagonal normal followed by ``steps`` inverse autoregressive flow steps
    conditioned on an encoder context c(x) (Kingma et al., 2016).

    z_0 = mu + sigma * eps; z_t = s_t * z_{t-1} + (1 - s_t) * m_t with
    (m_t, logit s_t) = AR-NN_t(z_{t-1}, c) (the numerically stable form);
    log q(z_T|x) = log N(z_0; mu, sigma) - sum_t sum_i log s_t,i.
    Each step's autoregressive network orders the dimensions by its own permutation.
    """

    def __init__(
        self,
        latent_dim,
        *,
        steps: count(8) = 2,
        context: count(1024) = 32,
        hidden: FlowWidths = [128],
    ):
        super().__init__(latent_dim)
        self.context = context
        self.encoder_outputs = 2 * latent_dim + context
        width = [max(w, latent_dim) for w in hidden] or [latent_dim]
        with torch.device("cpu"):  # Pyro builds its masks with .item(): not on the meta device
            self.flows = nn.ModuleList(
                ConditionalAffineAutoregressive(
                    ConditionalAutoRegressiveNN(latent_dim, context, width), stable=True
                )
                for _ in range(steps)
            )
        self.hidden_values = 2 * steps * (sum(width) + context + 3 * latent_dim)

    @property
    def values_per_draw(self) -> int:
        return 2 * self.latent_dim + self.hidden_values

    def forward(self, h):
        loc, scale = self.loc_scale(h)
        c = h[..., 2 * self.latent_dim :]
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(c) for flow in self.flows])
