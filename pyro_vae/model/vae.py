"""The VAE: p(z) p(x|z) as a Pyro model, q(z|x) as a Pyro guide.

Both run inside one ``pyro.plate("data", N, subsample=index)``: with a mini-batch of B
of the N training examples every log-density is scaled by N/B, so an ELBO estimator
sees an unbiased estimate of the full-data ELBO (Hoffman et al., 2013). The latent
site ``z`` is scaled by ``beta`` with ``poutine.scale`` in both model and guide, so
Trace_ELBO optimizes E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) (Higgins et al., 2017;
linear KL warm-up as in Bowman et al., 2016). Reported figures are nats per example.

Stacked stochastic layers (:mod:`pyro_vae.model.layers`): z = (z_1, ..., z_L), z_1 the
bottom layer the decoder reads (or every layer, ``decoder_reads = "all"``), with

    p(x, z) = p(z_L) prod_{l<L} p(z_l | z_(l+1)) p(x | z_1),
    p(z_l | z_(l+1)) = N(mu_l(z_(l+1)), diag sigma_l(z_(l+1))^2),

p(z_L) the prior slot, and one of three guides (``inference_network``):

* ``bottom_up``: q(z_1|x) q(z_2|z_1) ... q(z_L|z_(L-1)) (Burda et al., 2016, section 5);
* ``top_down``: q(z_L|x) q(z_(L-1)|x, z_L) ... q(z_1|x, z_2) (Tomczak & Welling, 2018,
  the HVAE of the VampPrior paper);
* ``ladder``: a deterministic upward pass d_1 = f_1(x), d_l = f_l(d_(l-1)) giving
  (mu^_l, sigma^_l); then top-down q(z_L|x) = N(mu^_L, sigma^_L) and, for l < L, the
  precision-weighted merge with the generative p(z_l|z_(l+1)) = N(mu_p, sigma_p)
  (Sonderby et al., 2016, eq. 17-19):

      sigma_q^-2 = sigma^^-2 + sigma_p^-2,  mu_q = (mu^ sigma^^-2 + mu_p sigma_p^-2) sigma_q^2.

Each layer is its own Pyro site (``z`` with one layer, ``z1`` ... ``zL`` with several),
so the estimators see every layer; for evaluation the layers are one vector
(z_1, ..., z_L), whose joint p(z) and q(z|x) :meth:`VAE.latent_prior` and :meth:`VAE.q`
give as distributions.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..errors import SpecError
from .condition import conditioned
from .layers import JointLatent, Structure, UpperLayer, concatenated, ladder_merge, stopped_call
from .likelihoods import Likelihood
from .posteriors import Posterior
from .priors import Prior
from .traits import traits_of



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
        upper: Sequence[UpperLayer] = (),
        structure: Structure = Structure(),
    ):
        super().__init__()
        self.name = name
        self.input_transform = input_transform
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = posterior
        self.encoder = encoder
        self.decoder = decoder
        self.upper = nn.ModuleList(upper)  # layers 2..L (empty: one layer, the same parameters as before layers)
        self.structure = structure
        self.num_data = num_data
        self.beta = 1.0
        prior.bind(self)

    @property
    def layers(self) -> int:
        return 1 + len(self.upper)

    @property
    def layer_dims(self) -> list[int]:
        """The latent size of each layer, bottom (z_1) first."""
        return [self.posterior.latent_dim] + [layer.posterior.latent_dim for layer in self.upper]

    @property
    def latent_dim(self) -> int:
        """The size of the whole latent vector (z_1, ..., z_L)."""
        return sum(self.layer_dims)

    classes = 0  # values of a categorical latent y (model/discrete.py); 0: none

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """The parameters by role, for gradient diagnostics: ``encoder`` (the guide's
        networks and families of every layer), ``decoder`` (the generative side: decoder,
        likelihood, prior and each layer's conditional prior)."""
        guide = [self.encoder, self.posterior, *(m for layer in self.upper for m in (layer.encoder, layer.posterior))]
        generative = [self.decoder, self.likelihood, self.prior, *(layer.down for layer in self.upper)]
        return {"encoder": [p for m in guide for p in m.parameters()],
                "decoder": [p for m in generative for p in m.parameters()]}

    @property
    def values_per_draw(self) -> int:
        """Values one draw of z holds in memory (for chunked evaluation): decoder outputs, and
        scoring z under p and q, every layer's."""
        layers = sum(layer.posterior.values_per_draw + 2 * layer.down.latent_dim for layer in self.upper)
        decoded = self.likelihood.outputs * math.prod(self.data_shape)
        return decoded + self.prior.values_per_draw + self.posterior.values_per_draw + layers

    @property
    def site_names(self) -> list[str]:
        """The Pyro sites of the layers, bottom first: ``z``, or ``z1`` ... ``zL``."""
        return ["z"] if not self.upper else [f"z{i + 1}" for i in range(self.layers)]

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
        """q(z|x) from the encoder's input u; with several layers, q(z_L|x) of the top layer
        (a function of x alone in the ``top_down`` and ``ladder`` guides: the VampPrior's
        components)."""
        if not self.upper:
            return self.posterior(self.encoder(u))
        guide = self.structure.inference_network
        if guide == "top_down":
            return self.upper[-1].posterior(self.upper[-1].encoder(u))
        if guide == "ladder":
            return self.upper[-1].posterior(self._upward(u)[-1])
        raise ValueError("the bottom_up guide's q(z_L|x) is not a function of x alone")

    @conditioned
    def q(self, x: Tensor):
        """q(z|x), event shape (latent_dim,), batch shape x.shape[:-len(data_shape)]; with
        several layers the joint q(z_1, ..., z_L | x) over the concatenated layers."""
        if not self.upper:
            return self.posterior_from_encoder_input(self.encoder_input(x))
        u = self.encoder_input(x)
        return JointLatent(lambda draw: self.walk_posterior(u, draw), self.layer_dims, u.shape[: u.dim() - len(self.data_shape)])

    @conditioned
    def latent_prior(self):
        """p(z) over the whole latent vector: the prior slot, or with several layers the
        joint p(z_L) prod p(z_l | z_(l+1)) over the concatenated layers."""
        if not self.upper:
            return self.prior()
        return JointLatent(self.walk_prior, self.layer_dims)

    # --- the layers ----------------------------------------------------------------------

    def _layer(self, i: int) -> tuple[nn.Module, Posterior]:
        """Layer i's (encoder, posterior), i = 0 the bottom."""
        return (self.encoder, self.posterior) if i == 0 else (self.upper[i - 1].encoder, self.upper[i - 1].posterior)

    def _upward(self, u: Tensor) -> list[Tensor]:
        """The ladder's deterministic pass: each layer's encoder output, d_l = f_l(d_(l-1))."""
        outputs = [self.encoder(u)]
        for layer in self.upper:
            outputs.append(layer.encoder(outputs[-1]))
        return outputs

    def walk_prior(self, draw: Callable) -> list[Tensor]:
        """p(z_L), then p(z_l | z_(l+1)) downwards: ``draw(i, p_i, None)`` gives z_i. The
        layers, bottom first."""
        z = [None] * self.layers
        z[-1] = draw(self.layers - 1, self.prior(), None)
        for i in range(self.layers - 2, -1, -1):
            z[i] = draw(i, self.upper[i].down(z[i + 1]), None)
        return z

    def walk_posterior(self, u: Tensor, draw: Callable) -> list[Tensor]:
        """The guide's layers in its sampling order (see the module docstring): ``draw(i,
        q_i, stopped_i)`` gives z_i, where stopped_i is z_i -> log q_i(z_i | its inputs) with
        every parameter detached and the inputs (x, the other layers' z) live."""
        guide, L = self.structure.inference_network, self.layers
        z: list = [None] * L
        if guide == "bottom_up":
            below = u
            for i in range(L):
                encoder, posterior = self._layer(i)
                h = encoder(below)
                stopped = self._stopped(posterior, encoder, below, h, i == 0)
                z[i] = below = draw(i, posterior(h), stopped)
        elif guide == "top_down":
            flat_u = u.reshape(*u.shape[: u.dim() - len(self.data_shape)], -1)
            for i in range(L - 1, -1, -1):
                encoder, posterior = self._layer(i)
                inputs = u if i == L - 1 else concatenated(flat_u, z[i + 1])
                h = encoder(inputs)
                z[i] = draw(i, posterior(h), self._stopped(posterior, encoder, inputs, h, i == L - 1))
        else:  # ladder
            up = self._upward(u)
            top = self.upper[-1].posterior
            z[-1] = draw(L - 1, top(up[-1]), partial(top.stopped_log_prob, up[-1]))
            for i in range(L - 2, -1, -1):
                posterior, down = self._layer(i)[1], self.upper[i].down
                loc, scale = ladder_merge(*posterior.loc_scale(up[i]), *down.loc_scale(z[i + 1]))

                def stopped(value, above=z[i + 1], h=up[i].detach(), posterior=posterior, down=down):
                    merged = ladder_merge(*posterior.loc_scale(h), *down.loc_scale(above, stopped=True))
                    return dist.Normal(*merged).to_event(1).log_prob(value)

                z[i] = draw(i, dist.Normal(loc, scale).to_event(1), stopped)
        return z

    @staticmethod
    def _stopped(posterior: Posterior, encoder: nn.Module, inputs: Tensor, h: Tensor, of_x: bool):
        """log q(z | inputs) with every parameter detached: from the encoder output itself
        when the inputs are x alone (one encoder pass, so a dropout mask is shared), else
        from the encoder rerun with detached parameters on the live inputs (z of another
        layer), so that the path through that layer's draw is kept."""
        if of_x:
            return partial(posterior.stopped_log_prob, h)
        return lambda z: posterior.stopped_log_prob(stopped_call(encoder, inputs), z, detach_input=False)

    def decoder_input(self, z: Tensor) -> Tensor:
        """What the decoder reads of the latent vector (z_1, ..., z_L): z_1, or all of it."""
        if not self.upper or self.structure.decoder_reads == "all":
            return z
        return z[..., : self.posterior.latent_dim]

    def _context(self, x: Optional[Tensor]) -> dict:
        """What p(x|z) needs of the observed x besides z: the library size of a count
        likelihood with ``library_size = true`` (the training mean when x is None)."""
        if getattr(self.likelihood, "library_size", False):
            return {"library": None if x is None else self.likelihood.observed_library(x)}
        return {}

    @conditioned
    def p_x(self, z: Tensor, x: Optional[Tensor] = None):
        """p(x|z), event shape data_shape; ``x``, the data scored, where the likelihood
        needs its library size."""
        return self.likelihood(self.decoder(self.decoder_input(z)), **self._context(x))

    @conditioned
    def decode_mean(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """E[x|z] (with x's library size where the likelihood takes one)."""
        return self.likelihood.mean(self.decoder(self.decoder_input(z)), **self._context(x))

    def forward(self, x: Tensor):
        return self.q(x)

    def use_estimator(self, estimator, kind: str) -> None:
        """Refuses what the estimator's traits cannot do on this structure: relaxing a discrete
        latent this VAE does not have; an analytic KL(q(z_l|.) || p(z_l|z_(l+1))) where the
        guide draws z_l before z_(l+1) (``bottom_up``: the KL at a z_(l+1) drawn given z_l is
        biased)."""
        traits = traits_of(estimator)
        if traits.discrete == "relaxed":
            raise SpecError(f"inference.estimator: {kind} relaxes a discrete latent y, and this model has none; "
                            "add a [model.discrete] table, or use trace_elbo")
        if traits.analytic_kl and self.upper and self.structure.inference_network == "bottom_up":
            raise SpecError(f"inference.estimator: {kind}'s closed-form KL of z_l against p(z_l | z_(l+1)) is biased "
                            "when the guide draws z_(l+1) after z_l (model.inference_network = \"bottom_up\"); use "
                            "trace_elbo, or inference_network = \"top_down\" or \"ladder\"")

    # --- Pyro model and guide --------------------------------------------------------

    def _plate(self, x: Tensor, index: Optional[Tensor]):
        return pyro.plate("data", self.num_data or len(x), subsample_size=len(x), subsample=index)

    def _register(self, *parts: str) -> None:
        for part in parts:
            pyro.module(f"{self.name}_{part}", getattr(self, part))

    @conditioned
    def model(self, x: Tensor, index: Optional[Tensor] = None):
        """p(z) p(x|z) over a batch x (rows ``index`` of the N training examples)."""
        self._register("prior", "likelihood", "decoder", *(("upper",) if self.upper else ()))
        with self._plate(x, index):
            with poutine.scale(scale=self.beta):
                if not self.upper:
                    z = pyro.sample("z", self.prior())
                else:
                    names = self.site_names
                    z = torch.cat(self.walk_prior(lambda i, d, stopped: pyro.sample(names[i], d)), -1)
            pyro.sample("x", self.p_x(z, x), obs=x)

    @conditioned
    def guide(self, x: Tensor, index: Optional[Tensor] = None):
        """q(z|x) = posterior(encoder(x)), reparameterized (with several layers, the walk of
        :meth:`walk_posterior`). Each site carries ``infer["stopped_log_prob"]``: z -> log q(z|x)
        with every parameter stopped, from the same encoder output (so encoder dropout draws
        one mask for both)."""
        self._register("encoder", "posterior", *(("upper",) if self.upper else ()))
        u = self.encoder_input(x)
        if self.upper:
            names = self.site_names
            with self._plate(x, index), poutine.scale(scale=self.beta):
                self.walk_posterior(u, lambda i, d, stopped: pyro.sample(names[i], d, infer={"stopped_log_prob": stopped}))
            return
        h = self.encoder(u)
        with self._plate(x, index):
            with poutine.scale(scale=self.beta):
                stopped = partial(self.posterior.stopped_log_prob, h)
                pyro.sample("z", self.posterior(h), infer={"stopped_log_prob": stopped})

    # --- direct evaluation (no tracing) ----------------------------------------------

    @conditioned
    def importance_terms(self, x: Tensor, num_samples: int) -> ImportanceTerms:
        """The three log-densities at ``num_samples`` draws z_s ~ q(z|x), unscaled."""
        q = self.q(x)
        z = q.rsample((num_samples,))
        return ImportanceTerms(self.p_x(z, x).log_prob(x), self.latent_prior().log_prob(z), q.log_prob(z))

    @torch.no_grad()
    @conditioned
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(z, E[x|z]) for n draws z ~ p(z) (with covariates, z ~ p(z|c) and E[x|z, c] for the
        n rows of ``condition``)."""
        prior = self.latent_prior()
        z = prior.sample() if prior.batch_shape else prior.sample((n,))  # p(z|c) holds one row per draw
        return z, self.decode_mean(z)

    @torch.no_grad()
    @conditioned
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at one draw z ~ q(z|x)."""
        return self.decode_mean(self.q(x).sample(), x)

