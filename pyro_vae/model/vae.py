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

A categorical y (the Gaussian-mixture VAE, M2) is the top of the same structure
(``structure.y``, :mod:`pyro_vae.model.categorical`): the site ``y`` is drawn first, from
p(y) in the model and q(y|x) (the ``classifier``) in the guide, and read by the prior of
z_L, p(z_L|y), or by the decoder, p(x|y, z). The conditionals given y (:meth:`VAE.q_z`,
:meth:`VAE.p_z`, :meth:`VAE.p_x_given`) are what the model and guide sample and what the
exact sum over y in evaluation reads; without y they are q(z|x), p(z) and p(x|z).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor, nn

from ..errors import SpecError
from .categorical import MODES, Baseline, MarginalMixture, RelaxedOneHot, StraightThroughOneHot
from .condition import conditioned
from .layers import JointLatent, Structure, UpperLayer, concatenated, ladder_merge, stopped_call
from .likelihoods import Likelihood
from .networks import GatedMLP, MLP
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
    """A variational autoencoder made of five swappable parts, in a latent structure.

    ``model(x, index)`` and ``guide(x, index)`` are Pyro functions for ``SVI``;
    ``num_data`` is N, the size of the training set the data plate scales to
    (None: the batch is the whole data set); ``beta`` weights the KL term; ``name``
    prefixes the parameters in Pyro's global param store (give two VAEs trained in one
    process different names, or call ``pyro.clear_param_store()`` in between).
    ``upper`` are the stochastic layers above the bottom one and ``structure`` how the
    layers connect, a categorical y included (with y, ``classifier`` maps the encoder's
    input to the logits of q(y|x), and ``baseline`` is the score function's neural
    baseline).

    The model registers the generative parts (prior, likelihood, decoder) with
    ``pyro.module`` and the guide the inference parts (encoder, posterior, classifier), as
    in Pyro's VAE example: every parameter is registered once per step.
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
        classifier: Optional[nn.Module] = None,
        baseline: Optional[Baseline] = None,
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
        if structure.y is not None:
            self.classifier = classifier
            self.baseline = baseline
            self.register_buffer("class_logits", torch.zeros(structure.y.classes))  # p(y): uniform
        # how the site y is treated (use_estimator) and the observed labels (supervise)
        self.mode = "enumerate"
        self.baseline_options: dict = {}
        self.temperature = 1.0
        self.straight_through = False
        self.alpha = 0.0
        self.labelled_batch = 0
        self.register_buffer("labelled_x", None, persistent=False)
        self.register_buffer("labelled_y", None, persistent=False)
        self.register_buffer("is_labelled", None, persistent=False)
        self.register_buffer("labelled_rows", None, persistent=False)
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

    @property
    def classes(self) -> int:
        """The number of values of the categorical y; 0 without one."""
        return self.structure.y.classes if self.structure.y is not None else 0

    def _y_feeds(self, part: str) -> bool:
        return self.structure.y is not None and self.structure.y.feeds == part

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """The parameters by role, for gradient diagnostics: ``encoder`` (the guide's
        networks and families of every layer), ``decoder`` (the generative side: decoder,
        likelihood, prior and each layer's conditional prior) and, with y, q(y|x)'s
        ``classifier`` (where the estimators differ most)."""
        guide = [self.encoder, self.posterior, *(m for layer in self.upper for m in (layer.encoder, layer.posterior))]
        generative = [self.decoder, self.likelihood, self.prior, *(layer.down for layer in self.upper)]
        groups = {"encoder": [p for m in guide for p in m.parameters()],
                  "decoder": [p for m in generative for p in m.parameters()]}
        if self.classes:
            groups["classifier"] = list(self.classifier.parameters())
        return groups

    @property
    def values_per_draw(self) -> int:
        """Values one draw of z holds in memory (for chunked evaluation): decoder outputs, and
        scoring z under p and q, every layer's; with y, q scored for every class and, where
        the decoder reads y, the decoder run for every class."""
        classes = max(self.classes, 1)
        layers = sum(layer.posterior.values_per_draw + 2 * layer.down.latent_dim for layer in self.upper)
        decoded = self.likelihood.outputs * math.prod(self.data_shape) * (classes if self._y_feeds("decoder") else 1)
        return decoded + self.prior.values_per_draw + self.posterior.values_per_draw * classes + layers

    @property
    def site_names(self) -> list[str]:
        """The Pyro sites of the continuous layers, bottom first: ``z``, or ``z1`` ... ``zL``."""
        return ["z"] if not self.upper else [f"z{i + 1}" for i in range(self.layers)]

    @property
    def latent_labels(self) -> list[str]:
        """A name per coordinate of the latent vector, for figures and reports: ``z[d]``, or
        with several layers ``z1[d]`` ... ``zL[d]``, d counted within the layer."""
        return [f"{name}[{d}]" for name, dim in zip(self.site_names, self.layer_dims) for d in range(dim)]

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

    def _flat(self, u: Tensor) -> Tensor:
        return u.reshape(*u.shape[: u.dim() - len(self.data_shape)], math.prod(self.data_shape))

    def one_hot(self, y: Tensor) -> Tensor:
        """One-hot y for integer classes; a relaxed sample is already a vector."""
        return y if y.is_floating_point() else F.one_hot(y, self.classes).to(self.class_logits.dtype)

    def _per_class(self):
        """A context for a computation with a class dimension right of the batch's (every y at
        once, (..., B, classes, ...)): the covariates c, (B, K), are read as (B, 1, K)."""
        conditioning = getattr(self, "conditioning", None)
        if conditioning is None or conditioning.current is None:
            return nullcontext()
        return conditioning.given(conditioning.current.unsqueeze(-2))

    def _eye(self) -> Tensor:
        return torch.eye(self.classes, dtype=self.class_logits.dtype, device=self.class_logits.device)

    @conditioned
    def q_y_logits(self, x: Tensor) -> Tensor:
        """The logits of q(y|x)."""
        return self.classifier(self.encoder_input(x))

    @conditioned
    def q_z(self, u: Tensor, y: Optional[Tensor] = None):
        """q(z|x, y) from the encoder's input u and one-hot y (q(z|x) without y, or where the
        encoder reads x alone); with several layers the joint over the concatenated layers."""
        if self.upper:
            batch = u.shape[: u.dim() - len(self.data_shape)]
            # the walk keeps the covariates c of this call: the joint is scored and sampled later
            return JointLatent(self._keeping_condition(lambda draw: self.walk_posterior(u, draw)), self.layer_dims, batch)
        return self.posterior(self._encoded(u, y))

    def _encoded(self, u: Tensor, y: Optional[Tensor]) -> Tensor:
        """The bottom encoder's output for u, or for u flattened beside one-hot y (q(z|x, y)):
        the library's mlp or gated_mlp reads y through its split first map (no copy of x per
        class), any other network, a user's subclass of those included (its own forward), the
        concatenation [x, y]."""
        if y is None or not self.structure.y.encoder_reads_y:
            return self.encoder(u)
        if type(self.encoder) in (MLP, GatedMLP):
            return self.encoder(self._flat(u), beside=y)
        return self.encoder(concatenated(self._flat(u), y))

    @conditioned
    def q(self, x: Tensor):
        """q(z|x), event shape (latent_dim,), batch shape x.shape[:-len(data_shape)]: with
        several layers the joint q(z_1, ..., z_L | x) over the concatenated layers; with a y
        the encoder reads, the marginal sum_y q(y|x) q(z|x, y)."""
        u = self.encoder_input(x)
        if self.classes and self.structure.y.encoder_reads_y:
            with self._per_class():
                components = self.q_z(u.unsqueeze(-len(self.data_shape) - 1), self._eye())
            return MarginalMixture(dist.Categorical(logits=self.classifier(u)), components)
        if not self.upper:
            return self.posterior_from_encoder_input(u)
        return self.q_z(u)

    def _top_prior(self, y: Optional[Tensor]):
        """The prior of the top continuous layer: p(z_L|y) where y feeds it, else the prior
        slot (with a class-conditional prior, the marginal over y)."""
        return self.prior.given(y) if y is not None and self._y_feeds("prior") else self.prior()

    @conditioned
    def p_z(self, y: Optional[Tensor] = None):
        """p(z|y) over the whole latent vector (p(z) without y, or where y feeds the decoder)."""
        top = self._top_prior(y)
        if not self.upper:
            return top
        conditioning = getattr(self, "conditioning", None)  # p(z | c): one distribution per row of c
        per_row = conditioning is not None and conditioning.prior and conditioning.current is not None
        # the top prior is built once (a VampPrior runs the encoder on its pseudo-inputs) and the
        # walk keeps the covariates c of this call: JointLatent walks the layers on every
        # log_prob and rsample, later, under whatever c is current then
        return JointLatent(self._keeping_condition(lambda draw: self.walk_prior(draw, y, top)), self.layer_dims,
                           conditioning.current.shape[:-1] if per_row else ())

    @conditioned
    def latent_prior(self):
        """p(z) over the whole latent vector: the prior slot, or with several layers the
        joint p(z_L) prod p(z_l | z_(l+1)) over the concatenated layers (with y, the marginal
        over y)."""
        return self.p_z(None)

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

    def walk_prior(self, draw: Callable, y: Optional[Tensor] = None, top=None) -> list[Tensor]:
        """p(z_L|y) (see :meth:`_top_prior`; ``top`` when already built), then p(z_l | z_(l+1))
        downwards: ``draw(i, p_i, None)`` gives z_i. The layers, bottom first."""
        z = [None] * self.layers
        z[-1] = draw(self.layers - 1, self._top_prior(y) if top is None else top, None)
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
                stopped = self._keeping_condition(self._stopped(posterior, encoder, below, h, i == 0))
                z[i] = below = draw(i, posterior(h), stopped)
        elif guide == "top_down":
            flat_u = u.reshape(*u.shape[: u.dim() - len(self.data_shape)], -1)
            for i in range(L - 1, -1, -1):
                encoder, posterior = self._layer(i)
                inputs = u if i == L - 1 else concatenated(flat_u, z[i + 1])
                h = encoder(inputs)
                z[i] = draw(i, posterior(h), self._keeping_condition(self._stopped(posterior, encoder, inputs, h, i == L - 1)))
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

                z[i] = draw(i, dist.Normal(loc, scale).to_event(1), self._keeping_condition(stopped))
        return z

    def _keeping_condition(self, function: Callable) -> Callable:
        """``function`` run, whenever it is called, with the covariates c of now (a stopped log q
        reruns a network that reads c, after the guide that made it has returned)."""
        conditioning = getattr(self, "conditioning", None)
        if conditioning is None:
            return function
        c = conditioning.current

        def call(*args, **kwargs):
            with conditioning.given(c):
                return function(*args, **kwargs)

        return call

    @staticmethod
    def _stopped(posterior: Posterior, encoder: nn.Module, inputs: Tensor, h: Tensor, of_x: bool):
        """log q(z | inputs) with every parameter detached: from the encoder output itself
        when the inputs are x alone (one encoder pass, so a dropout mask is shared), else
        from the encoder rerun with detached parameters on the live inputs (z of another
        layer), so that the path through that layer's draw is kept."""
        if of_x:
            return partial(posterior.stopped_log_prob, h)
        return lambda z: posterior.stopped_log_prob(stopped_call(encoder, inputs), z, detach_input=False)

    def descended(self, z: Tensor, layer: int) -> Tensor:
        """z with the layers below ``layer`` (0: the bottom) replaced, top down, by the means
        of their conditional priors, z_l = mu_l(z_(l+1)): what a change of an upper layer
        means to the decoder (a traversal of z_2 moves z_1 with it)."""
        parts = list(torch.split(z, self.layer_dims, -1))
        for i in range(layer - 1, -1, -1):
            parts[i] = self.upper[i].down.loc_scale(parts[i + 1])[0]
        return torch.cat(parts, -1)

    def decoder_input(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """What the decoder reads: of the latent vector (z_1, ..., z_L), z_1 or all of it;
        and one-hot y beside it where y feeds the decoder (M2)."""
        if self.upper and self.structure.decoder_reads == "bottom":
            z = z[..., : self.posterior.latent_dim]
        if y is not None and self._y_feeds("decoder"):
            z = concatenated(z, y)
        return z

    def _context(self, x: Optional[Tensor]) -> dict:
        """What p(x|z) needs of the observed x besides z: the library size of a count
        likelihood with ``library_size = true`` (the training mean when x is None)."""
        if getattr(self.likelihood, "library_size", False):
            return {"library": None if x is None else self.likelihood.observed_library(x)}
        return {}

    @conditioned
    def p_x_given(self, z: Tensor, y: Optional[Tensor] = None, x: Optional[Tensor] = None):
        """p(x|z, y) (p(x|z) without y or where y does not feed the decoder), event shape
        data_shape; ``x``, the data scored, where the likelihood needs its library size."""
        return self.likelihood(self.decoder(self.decoder_input(z, y)), **self._context(x))

    def _unsqueezed(self, x: Optional[Tensor]) -> Optional[Tensor]:
        return None if x is None else x.unsqueeze(-len(self.data_shape) - 1)

    @conditioned
    def p_x(self, z: Tensor, x: Optional[Tensor] = None):
        """p(x|z); where y feeds the decoder, the marginal sum_y p(y) p(x|y, z)."""
        if not self._y_feeds("decoder"):
            return self.p_x_given(z, None, x)
        with self._per_class():
            components = self.p_x_given(z.unsqueeze(-2), self._eye(), self._unsqueezed(x))
        return dist.MixtureSameFamily(dist.Categorical(logits=self.class_logits), components)

    @conditioned
    def decode_mean(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """E[x|z] (with x's library size where the likelihood takes one); where y feeds the
        decoder, sum_y p(y) E[x|y, z]."""
        if not self._y_feeds("decoder"):
            return self.likelihood.mean(self.decoder(self.decoder_input(z)), **self._context(x))
        with self._per_class():
            means = self.likelihood.mean(self.decoder(self.decoder_input(z.unsqueeze(-2), self._eye())),
                                         **self._context(self._unsqueezed(x)))
        weights = torch.softmax(self.class_logits, -1).reshape(self.classes, *(1,) * len(self.data_shape))
        return (weights * means).sum(-len(self.data_shape) - 1)

    def forward(self, x: Tensor):
        return self.q(x)

    # --- configuration ---------------------------------------------------------------

    def use_estimator(self, estimator, kind: str) -> None:
        """Treats the structure's sites as the estimator's traits say, and refuses what they
        cannot do on it: a y the estimator cannot treat (its ``discrete`` is one of MODES:
        enumerated, score function or relaxed) or a relaxation without a y; Pyro's JIT with
        y's data-dependent labelled rows; an analytic KL(q(z_l|.) || p(z_l|z_(l+1))) where the
        guide draws z_l before z_(l+1) (``bottom_up``: the KL at a z_(l+1) drawn given z_l is
        biased)."""
        traits = traits_of(estimator)
        if self.classes:
            if traits.discrete not in MODES:
                raise SpecError(
                    f"inference.estimator: {kind} cannot handle model.discrete's categorical y (it needs every latent "
                    "reparameterized); use trace_enum, trace_graph, trace_elbo or relaxed"
                )
            if traits.jit:
                raise SpecError(f"inference.estimator: {kind} with jit = true cannot trace model.discrete's "
                                "data-dependent labelled rows; set jit = false")
            self.mode = traits.discrete
            self.baseline_options = {}
            if self.mode == "score" and traits.baseline != "none":
                self.baseline_options = {"use_decaying_avg_baseline": True, "baseline_beta": traits.baseline_beta}
                if traits.baseline == "neural":
                    self.baseline_options.update(nn_baseline=self.baseline)
            self.straight_through = traits.straight_through
        elif traits.discrete == "relaxed":
            raise SpecError(f"inference.estimator: {kind} relaxes a discrete latent y, and this model has none; "
                            "add a [model.discrete] table, or use trace_elbo")
        if traits.analytic_kl and self.upper and self.structure.inference_network == "bottom_up":
            raise SpecError(f"inference.estimator: {kind}'s closed-form KL of z_l against p(z_l | z_(l+1)) is biased "
                            "when the guide draws z_(l+1) after z_l (model.inference_network = \"bottom_up\"); use "
                            "trace_elbo, or inference_network = \"top_down\" or \"ladder\"")

    def supervise(self, x: Tensor, y: Tensor, rows: Tensor, alpha: float, batch: int) -> None:
        """Observe y on the labelled training examples x (rows ``rows`` of the N training
        examples); ``alpha`` weighs alpha * E_labelled[log q(y|x)]."""
        if not self.classes:
            raise ValueError("labels observe a categorical y, and this VAE has none")
        if len(x) == 0:
            return
        self.labelled_x, self.labelled_y = x, y.long()
        mask = torch.zeros(self.num_data, dtype=torch.bool, device=x.device)
        mask[rows.to(x.device)] = True
        self.is_labelled = mask
        self.labelled_rows = rows.to(x.device)
        self.alpha, self.labelled_batch = float(alpha), min(batch, len(x))

    # --- Pyro model and guide --------------------------------------------------------

    def _plate(self, x: Tensor, index: Optional[Tensor]):
        return pyro.plate("data", self.num_data or len(x), subsample_size=len(x), subsample=index)

    def _unlabelled(self, index: Optional[Tensor]):
        """Masks the batch's labelled rows (they enter through the labelled plate)."""
        if self.is_labelled is None or index is None:
            return nullcontext()
        return poutine.mask(mask=~self.is_labelled[index.to(self.is_labelled.device)])

    def _labelled_covariates(self, rows: Tensor):
        """A context in which the conditioned parts read the covariates of the labelled plate's
        rows (their rows of the training split); nothing to do without covariates."""
        conditioning = getattr(self, "conditioning", None)
        if conditioning is None or conditioning.observed is None:
            return nullcontext()
        c = conditioning.observed[self.labelled_rows[rows].to(conditioning.observed.device)]
        return conditioning.given(c.to(self.class_logits.dtype))

    def _labelled_plate(self):
        return pyro.plate("labelled", len(self.labelled_x), subsample_size=self.labelled_batch,
                          device=self.labelled_x.device)

    def _register(self, *parts: str) -> None:
        for part in parts:
            pyro.module(f"{self.name}_{part}", getattr(self, part))

    def _y_distribution(self, logits: Tensor):
        """The y site's distribution, p(y) or q(y|x), as the estimator treats y: categorical,
        or relaxed at the current temperature."""
        if self.mode == "relaxed":
            family = StraightThroughOneHot if self.straight_through else RelaxedOneHot
            return family(torch.tensor(self.temperature, device=logits.device), logits=logits)
        return dist.Categorical(logits=logits)

    def _prior_sites(self, y: Optional[Tensor], suffix: str = "") -> Tensor:
        """The model's continuous layers given y, one site each (named with ``suffix``)."""
        if not self.upper:
            return pyro.sample("z" + suffix, self._top_prior(y))
        names = self.site_names
        return torch.cat(self.walk_prior(lambda i, d, stopped: pyro.sample(names[i] + suffix, d), y), -1)

    def _posterior_sites(self, u: Tensor, y: Optional[Tensor], suffix: str = "") -> None:
        """The guide's continuous layers given y, one site each (named with ``suffix``), each
        with ``infer["stopped_log_prob"]``: z -> log q(z|.) with every parameter stopped, from
        the same encoder output (so encoder dropout draws one mask for both)."""
        if self.upper:
            names = self.site_names
            self.walk_posterior(u, lambda i, d, stopped: pyro.sample(names[i] + suffix, d,
                                                                     infer={"stopped_log_prob": stopped}))
            return
        h = self._encoded(u, y)
        pyro.sample("z" + suffix, self.posterior(h), infer={"stopped_log_prob": partial(self.posterior.stopped_log_prob, h)})

    @property
    def objective_parts(self) -> tuple[str, ...]:
        """The independent parts of the objective, which an estimator may trace one at a time
        (``model(..., part=p)``): ``("all",)``, or with labelled examples the unlabelled
        batch and the labelled plate. Pyro's Trace_ELBO adds every model site outside a
        score-function site's plates to that site's learning signal, so traced together, the
        labelled plate's whole sum enters the signal of every unlabelled y (issue 28: the
        classifier gradient's variance was 19 to 154 times what it needs to be); traced apart,
        each unlabelled y's signal is its own example's log-weight. The loss is the same sum."""
        return ("unlabelled", "labelled") if self.labelled_x is not None else ("all",)

    @conditioned
    def model(self, x: Tensor, index: Optional[Tensor] = None, part: str = "all"):
        """p(y) p(z|y) p(x|z, y) over a batch x (rows ``index`` of the N training examples);
        y (where there is one) latent on unlabelled rows, observed in the labelled plate.
        ``part``: one of :attr:`objective_parts`, or ``all``."""
        self._register("prior", "likelihood", "decoder", *(("upper",) if self.upper else ()))
        if part != "labelled":
            with self._plate(x, index), self._unlabelled(index):
                with poutine.scale(scale=self.beta):
                    y = self.one_hot(pyro.sample("y", self._y_distribution(self.class_logits))) if self.classes else None
                    z = self._prior_sites(y)
                pyro.sample("x", self.p_x_given(z, y, x), obs=x)
        if self.labelled_x is not None and part != "unlabelled":
            with self._labelled_plate() as rows, self._labelled_covariates(rows):
                xl, yl = self.labelled_x[rows], self.labelled_y[rows]
                pyro.sample("y_labelled", dist.Categorical(logits=self.class_logits), obs=yl)
                y = self.one_hot(yl)
                with poutine.scale(scale=self.beta):
                    z = self._prior_sites(y, "_labelled")
                pyro.sample("x_labelled", self.p_x_given(z, y, xl), obs=xl)
                if self.alpha > 0:
                    log_q = dist.Categorical(logits=self.q_y_logits(xl)).log_prob(yl)
                    pyro.factor("classification", self.alpha / len(self.labelled_x) * log_q)

    @conditioned
    def guide(self, x: Tensor, index: Optional[Tensor] = None, part: str = "all"):
        """q(y|x) q(z|x, y) (q(z|x) without y), z reparameterized (with several layers, the
        walk of :meth:`walk_posterior`); y enumerated, sampled or relaxed as
        :meth:`use_estimator` set. ``part`` as in :meth:`model`."""
        self._register("encoder", "posterior", *(("upper",) if self.upper else ()), *(("classifier",) if self.classes else ()))
        u = self.encoder_input(x)
        if part != "labelled":
            with self._plate(x, index), self._unlabelled(index), poutine.scale(scale=self.beta):
                y = self._guide_y(u, x) if self.classes else None
                self._posterior_sites(u, y)
        if self.labelled_x is not None and part != "unlabelled":
            with self._labelled_plate() as rows, self._labelled_covariates(rows):
                ul = self.encoder_input(self.labelled_x[rows])
                with poutine.scale(scale=self.beta):
                    self._posterior_sites(ul, self.one_hot(self.labelled_y[rows]), "_labelled")

    def _guide_y(self, u: Tensor, x: Tensor) -> Tensor:
        """y ~ q(y|x), with the infer options its treatment needs (enumeration, baselines)."""
        infer: dict = {}
        if self.mode == "enumerate":
            infer = {"enumerate": "parallel"}
        elif self.baseline_options:
            infer = {"baseline": dict(self.baseline_options)}
            if "nn_baseline" in infer["baseline"]:
                pyro.module(f"{self.name}_baseline", self.baseline)
                self.baseline.scale = (self.num_data or len(x)) / len(x)
                infer["baseline"]["nn_baseline_input"] = u
        return self.one_hot(pyro.sample("y", self._y_distribution(self.classifier(u)), infer=infer))

    # --- direct evaluation (no tracing) ----------------------------------------------

    @torch.no_grad()
    @conditioned
    def sample_given(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(z, E[x|z, y]) for z ~ p(z|y), one draw per class in ``y`` (integers)."""
        y = self.one_hot(y)
        p = self.p_z(y)
        z = p.sample() if self._y_feeds("prior") or p.batch_shape else p.sample(y.shape[:-1])
        return z, self.likelihood.mean(self.decoder(self.decoder_input(z, y)))

    @torch.no_grad()
    @conditioned
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(z, E[x|z]) for n draws z ~ p(z) (with y: y ~ p(y), z ~ p(z|y), E[x|z, y]; with
        covariates, z ~ p(z|c) and E[x|z, c] for the n rows of ``condition``)."""
        if self.classes:
            return self.sample_given(dist.Categorical(logits=self.class_logits).sample((n,)))
        prior = self.latent_prior()
        z = prior.sample() if prior.batch_shape else prior.sample((n,))  # p(z|c) holds one row per draw
        return z, self.decode_mean(z)

    @torch.no_grad()
    @conditioned
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at one draw z ~ q(z|x) (with y: E[x|z, y] at y ~ q(y|x), z ~ q(z|x, y))."""
        if not self.classes:
            return self.decode_mean(self.q(x).sample(), x)
        u = self.encoder_input(x)
        y = self.one_hot(dist.Categorical(logits=self.classifier(u)).sample())
        z = self.q_z(u, y).sample()
        return self.likelihood.mean(self.decoder(self.decoder_input(z, y)), **self._context(x))
