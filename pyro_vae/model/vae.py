"""The VAE: p(z) p(x|z) as a Pyro model, q(z|x) as a Pyro guide.

Both run inside one ``pyro.plate("data", N, subsample=index)``: with a mini-batch of B
of the N training examples every log-density is scaled by N/B, so an ELBO estimator
sees an unbiased estimate of the full-data ELBO (Hoffman et al., 2013). The latent
site ``z`` is scaled by ``beta`` with ``poutine.scale`` in both model and guide, so
Trace_ELBO optimizes E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) (Higgins et al., 2017;
linear KL warm-up as in Bowman et al., 2016). Reported figures are nats per example.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Optional

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from ..errors import SpecError
from .likelihoods import Likelihood
from .posteriors import Posterior
from .priors import Prior



class ImportanceTerms(NamedTuple):
    """log p(x|z_s), log p(z_s), log q(z_s|x) for S samples z_s ~ q(z|x): each (S, B)."""

    log_px_z: Tensor
    log_pz: Tensor
    log_qz: Tensor

    @property
    def log_weights(self) -> Tensor:
        return self.log_px_z + self.log_pz - self.log_qz


class VAE(nn.Module):
    """A variational autoencoder made of five swappable parts.

    ``model(x, index)`` and ``guide(x, index)`` are Pyro functions for ``SVI``;
    ``num_data`` is N, the size of the training set the data plate scales to
    (None: the batch is the whole data set); ``beta`` weights the KL term; ``name``
    prefixes the parameters in Pyro's global param store (give two VAEs trained in one
    process different names, or call ``pyro.clear_param_store()`` in between).

    The model registers the generative parts (prior, likelihood, decoder) with
    ``pyro.module`` and the guide the inference parts (encoder, posterior), as in
    Pyro's VAE example: every parameter is registered once per step.
    """

    def __init__(
        self,
        prior: Prior,
        likelihood: Likelihood,
        posterior: Posterior,
        encoder: nn.Module,
        decoder: nn.Module,
        num_data: Optional[int] = None,
        name: str = "vae",
        input_transform: str = "auto",
    ):
        super().__init__()
        self.name = name
        self.input_transform = input_transform
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = posterior
        self.encoder = encoder
        self.decoder = decoder
        self.num_data = num_data
        self.beta = 1.0
        prior.bind(self)

    @property
    def latent_dim(self) -> int:
        return self.posterior.latent_dim

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.likelihood.data_shape

    # --- the distributions -----------------------------------------------------------

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder sees of x: ``log1p`` (log(1 + x), the scVI convention for counts),
        ``identity``, or with ``auto`` the likelihood's own choice (log1p for counts, 8-bit
        levels rescaled, else x)."""
        if self.input_transform == "log1p":
            return torch.log1p(x)
        if self.input_transform == "identity":
            return x
        return self.likelihood.encoder_input(x)

    @property
    def encoder_input_bounds(self) -> tuple[float | None, float | None]:
        """The range of encoder_input(x) over the likelihood's support."""
        if self.input_transform == "auto":
            return self.likelihood.encoder_input_bounds
        lower, upper = self.likelihood.domain_bounds
        if self.input_transform == "log1p":
            return (None if lower is None else math.log1p(lower), None if upper is None else math.log1p(upper))
        return lower, upper

    def posterior_from_encoder_input(self, u: Tensor):
        return self.posterior(self.encoder(u))

    def q(self, x: Tensor):
        """q(z|x), event shape (latent_dim,), batch shape x.shape[:-len(data_shape)]."""
        return self.posterior_from_encoder_input(self.encoder_input(x))

    def _context(self, x: Optional[Tensor]) -> dict:
        """What p(x|z) needs of the observed x besides z: the library size of a count
        likelihood with ``library_size = true`` (the training mean when x is None)."""
        if getattr(self.likelihood, "library_size", False):
            return {"library": None if x is None else self.likelihood.observed_library(x)}
        return {}

    def p_x(self, z: Tensor, x: Optional[Tensor] = None):
        """p(x|z), event shape data_shape; ``x``, the data scored, where the likelihood
        needs its library size."""
        return self.likelihood(self.decoder(z), **self._context(x))

    def decode_mean(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """E[x|z] (with x's library size where the likelihood takes one)."""
        return self.likelihood.mean(self.decoder(z), **self._context(x))

    def forward(self, x: Tensor):
        return self.q(x)

    def use_estimator(self, estimator, kind: str) -> None:
        """Refuses estimators of a discrete latent this VAE does not have."""
        if getattr(estimator, "discrete", None) == "relaxed":
            raise SpecError(f"inference.estimator: {kind} relaxes a discrete latent y, and this model has none; "
                            "add a [model.discrete] table, or use trace_elbo")

    # --- Pyro model and guide --------------------------------------------------------

    def _plate(self, x: Tensor, index: Optional[Tensor]):
        return pyro.plate("data", self.num_data or len(x), subsample_size=len(x), subsample=index)

    def model(self, x: Tensor, index: Optional[Tensor] = None):
        """p(z) p(x|z) over a batch x (rows ``index`` of the N training examples)."""
        for part in ("prior", "likelihood", "decoder"):
            pyro.module(f"{self.name}_{part}", getattr(self, part))
        with self._plate(x, index):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.p_x(z, x), obs=x)

    def guide(self, x: Tensor, index: Optional[Tensor] = None):
        """q(z|x) = posterior(encoder(x)), reparameterized. The site carries
        ``infer["stopped_log_prob"]``: z -> log q(z|x) with every parameter stopped, from the
        same encoder output (so encoder dropout draws one mask for both)."""
        for part in ("encoder", "posterior"):
            pyro.module(f"{self.name}_{part}", getattr(self, part))
        h = self.encoder(self.encoder_input(x))
        with self._plate(x, index):
            with poutine.scale(scale=self.beta):
                stopped = partial(self.posterior.stopped_log_prob, h)
                pyro.sample("z", self.posterior(h), infer={"stopped_log_prob": stopped})

    # --- direct evaluation (no tracing) ----------------------------------------------

    def importance_terms(self, x: Tensor, num_samples: int) -> ImportanceTerms:
        """The three log-densities at ``num_samples`` draws z_s ~ q(z|x), unscaled."""
        q = self.q(x)
        z = q.rsample((num_samples,))
        return ImportanceTerms(self.p_x(z, x).log_prob(x), self.prior().log_prob(z), q.log_prob(z))

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(z, E[x|z]) for n draws z ~ p(z)."""
        z = self.prior().sample((n,))
        return z, self.decode_mean(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at one draw z ~ q(z|x)."""
        return self.decode_mean(self.q(x).sample(), x)
