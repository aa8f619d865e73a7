"""Stacked stochastic layers: the parts of a layer above the bottom one, and the joint
distribution of all layers as one vector.

A VAE with L layers z_1 (bottom, read by the decoder) ... z_L (top, under the prior slot)
holds, for each layer l >= 2, an :class:`UpperLayer`: its guide network and posterior
family, and the network of the conditional prior of the layer below,

    p(z_(l-1) | z_l) = N(mu(z_l), diag sigma(z_l)^2),  sigma = softplus(.) + MIN_SCALE

(:class:`ConditionalNormal`; the hierarchical VAEs of Burda et al., 2016, Sonderby et al.,
2016, Tomczak & Welling, 2018). The model and guide walk the layers
(``VAE.walk_prior``, ``VAE.walk_posterior``, see :mod:`pyro_vae.model.vae` for the
factorizations); :class:`JointLatent` turns such a walk into one distribution over
(z_1, ..., z_L) concatenated, which is what evaluation, analysis and sampling read.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
import pyro.distributions as dist

from .categorical import CategoricalY
from .posteriors import MIN_SCALE, Posterior

GUIDES = ("bottom_up", "top_down", "ladder")
DECODER_READS = ("bottom", "all")


def stopped_call(module: nn.Module, *inputs: Tensor) -> Tensor:
    """``module(*inputs)`` with every parameter of the module detached: gradients reach the
    inputs only (the path derivative's log q, Roeder et al., 2017; Tucker et al., 2019)."""
    detached = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, detached, inputs)


def concatenated(a: Tensor, b: Tensor) -> Tensor:
    """[a, b] along the last dimension, the other dimensions broadcast."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], -1)


class ConditionalNormal(nn.Module):
    """p(z_l | z_(l+1)) = N(mu, diag sigma^2), (mu, raw sigma) the ``network``'s 2 D outputs."""

    def __init__(self, network: nn.Module, latent_dim: int):
        super().__init__()
        self.network, self.latent_dim = network, latent_dim

    def loc_scale(self, above: Tensor, stopped: bool = False) -> tuple[Tensor, Tensor]:
        """(mu, sigma) given the layer above; ``stopped``: the network's parameters detached."""
        h = stopped_call(self.network, above) if stopped else self.network(above)
        d = self.latent_dim
        return h[..., :d], F.softplus(h[..., d : 2 * d]) + MIN_SCALE

    def forward(self, above: Tensor) -> dist.Distribution:
        return dist.Normal(*self.loc_scale(above)).to_event(1)


class UpperLayer(nn.Module):
    """Layer l >= 2: q's network and family for z_l, and p(z_(l-1) | z_l) (``down``)."""

    def __init__(self, encoder: nn.Module, posterior: Posterior, down: ConditionalNormal):
        super().__init__()
        self.encoder, self.posterior, self.down = encoder, posterior, down


def ladder_merge(loc_up: Tensor, scale_up: Tensor, loc_prior: Tensor, scale_prior: Tensor) -> tuple[Tensor, Tensor]:
    """The precision-weighted combination of the upward and the generative Gaussian
    (Sonderby et al., 2016, eq. 18-19): the product of the two densities, renormalized."""
    precision_up, precision_prior = scale_up.pow(-2), scale_prior.pow(-2)
    precision = precision_up + precision_prior
    return (loc_up * precision_up + loc_prior * precision_prior) / precision, precision.rsqrt()


class Structure(NamedTuple):
    """How the layers connect: the guide (one of GUIDES), what the decoder reads of the
    continuous layers, and the categorical y at the top of the structure, if any
    (:class:`~pyro_vae.model.categorical.CategoricalY`: how many classes, and which part
    reads it)."""

    inference_network: str = "bottom_up"
    decoder_reads: str = "bottom"
    y: Optional[CategoricalY] = None


# draw(i, distribution of z_i given the layers drawn so far, stopped log-density) -> z_i
Draw = Callable[[int, dist.Distribution, Callable[[Tensor], Tensor]], Tensor]


class JointLatent(Distribution):
    """One distribution over z = (z_1, ..., z_L) concatenated (bottom first), from a walk
    that visits the layers in their sampling order (``walk(draw)`` calls ``draw(i, d_i,
    stopped_i)`` with d_i the conditional of layer i given those drawn before, and uses
    its return value as z_i).

    ``rsample`` draws ancestrally (reparameterized where each layer is); ``log_prob(z)``
    is sum_i log d_i(z_i | z's other layers), each conditional rebuilt from z's slices.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, walk: Callable[[Draw], None], dims: Sequence[int], batch_shape=torch.Size()):
        self.walk, self.dims = walk, list(dims)
        super().__init__(torch.Size(batch_shape), torch.Size([sum(self.dims)]), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return True

    def split(self, z: Tensor) -> list[Tensor]:
        return list(torch.split(z, self.dims, -1))

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        drawn: dict[int, Tensor] = {}

        def draw(i, d, stopped):
            # the top (first) layer is drawn with the sample shape; the others follow its batch shape
            draws = d.rsample if d.has_rsample else d.sample  # a mixture prior on top: not reparameterized
            drawn[i] = draws(sample_shape) if not drawn else draws()
            return drawn[i]

        self.walk(draw)
        return torch.cat([drawn[i] for i in range(len(self.dims))], -1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        parts = self.split(value)
        total: list[Tensor] = []

        def draw(i, d, stopped):
            total.append(d.log_prob(parts[i]))
            return parts[i]

        self.walk(draw)
        return sum(total)
