"""A categorical latent y beside z: the Gaussian-mixture VAE and the M2 model.

Generative shapes (``model.discrete.shape``):

* ``mixture``: p(y) p(z|y) p(x|z) with p(z|y) = N(mu_y, diag sigma_y^2) learned per class
  (Dilokthanakul et al., 2016; Jiang et al., 2017, "VaDE"): unsupervised clustering;
* ``m2``: p(y) p(z) p(x|y, z), the decoder reading z and one-hot y concatenated
  (Kingma et al., 2014): semi-supervised classification, class-conditional generation.

p(y) is uniform. The guide factorizes as q(y|x) q(z|x, y): q(y|x) is the ``classifier``
network's softmax, q(z|x, y) the spec's posterior on the encoder's output for x and
one-hot y concatenated; with ``encoder_reads_y = False``, as q(y|x) q(z|x), the encoder
reading x alone (VaDE's factorization, Jiang et al., 2017), which admits any encoder kind.
With the mixture shape it clustered digits better: with q(z|x, y) the encoder's random
response to one-hot y gives some classes an advantage on every example at the start, and
fewer clusters survived; on MNIST the two guides tie (``models/gmvae.toml``, BENCHMARKS.md).

How the site ``y`` is treated follows the estimator (:meth:`DiscreteVAE.use_estimator`):

* ``enumerate``: parallel enumeration in the guide, so TraceEnum_ELBO sums over y exactly;
* ``score``: y is sampled; its gradient is the score function with each example's own
  log-weight as the learning signal (both Pyro ELBOs Rao-Blackwellize over the data plate):
  no baseline with Trace_ELBO; with TraceGraph_ELBO a decaying average of that signal and
  optionally a neural baseline subtracted (Mnih & Gregor, 2014);
* ``relaxed``: y is a Gumbel-softmax / Concrete sample at temperature tau (Jang et al.,
  2017; Maddison et al., 2017), optionally straight-through (hard one-hot forward). The
  decoder and p(z|y) read the relaxed one-hot vector (p(z|y) with mu = y^T mu_k and
  sigma = y^T sigma_k), and y's two log-densities are the categorical ones at the relaxed
  vector, <y, log p> and <y, log q>: exact at one-hot y, and biased by as much as the
  temperature leaves y away from the vertices.

Semi-supervised training (``data.labelled``): the labelled examples are held by the VAE
(:meth:`DiscreteVAE.supervise`). Each step's objective is the unbiased estimate

    (N/B) sum_{unlabelled rows of the batch} U(x)
      + (N_l/b_l) sum_{b_l labelled examples} [L(x, y) + (alpha/N_l) log q(y|x)],

U(x) the ELBO with y latent and L(x, y) the ELBO of log p(x, y) (Kingma et al., 2014,
eq. 9): the data plate masks its labelled rows, and a second plate, ``labelled``,
subsamples b_l labelled examples (drawn in the guide, replayed in the model).

For evaluation and analysis, :meth:`DiscreteVAE.q`, ``prior()`` and :meth:`DiscreteVAE.p_x`
give the marginals over y, sum_y q(y|x) q(z|x, y), sum_y p(y) p(z|y) and (M2)
sum_y p(y) p(x|y, z), so that every tool written for a continuous latent reads the
discrete model's z correctly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor, nn

from ..errors import SpecError
from .layers import concatenated
from .networks import NETWORKS
from .numerics import softplus_inverse
from .priors import Prior
from .traits import traits_of
from .vae import VAE

MODES = ("enumerate", "score", "relaxed")


class ClassConditionalPrior(Prior):
    """p(z|y) = N(mu_y, diag sigma_y^2) per class, learned; ``prior()`` is the marginal
    p(z) = sum_y p(y) p(z|y).

    The means start as N(0, 0.05^2 I) draws: apart, so that the symmetry between the classes
    is broken, and close, so that the x-dependent part of each example's ELBO decides its
    class. From N(0, I) draws the classes' ||mu_y||^2 differ by several nats, the same for
    every example, and the component nearest the encoder's first outputs took every example
    of MNIST within an epoch (cluster accuracy 11.7%, NMI 0; 52.5% and 0.51 from the small
    start; BENCHMARKS.md)."""

    INITIAL_SPREAD = 0.05

    def __init__(self, latent_dim: int, classes: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(self.INITIAL_SPREAD * torch.randn(classes, latent_dim))
        self.raw_scale = nn.Parameter(torch.full((classes, latent_dim), softplus_inverse(1.0)))
        self.register_buffer("class_logits", torch.zeros(classes))

    @property
    def values_per_draw(self) -> int:
        return self.loc.numel()

    def given(self, y: Tensor) -> dist.Distribution:
        """p(z|y) for one-hot (or relaxed one-hot) y of shape (..., classes)."""
        return dist.Normal(y @ self.loc, y @ F.softplus(self.raw_scale)).to_event(1)

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.loc, F.softplus(self.raw_scale)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.class_logits), components)


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


class DiscreteVAE(VAE):
    """A VAE with a categorical latent y (see the module docstring). ``classifier`` maps the
    encoder's input to the logits of q(y|x); ``encoder`` reads x (flattened) and one-hot y,
    or x alone if not ``encoder_reads_y``; with ``shape = "m2"`` the decoder reads z and
    one-hot y."""

    def __init__(self, prior, likelihood, posterior, encoder, decoder, classifier, classes: int, shape: str,
                 num_data=None, name="vae", input_transform="auto", baseline: Optional[Baseline] = None,
                 encoder_reads_y: bool = True):
        super().__init__(prior, likelihood, posterior, encoder, decoder, num_data, name, input_transform)
        self.classifier = classifier
        self.classes = classes
        self.shape = shape
        self.encoder_reads_y = encoder_reads_y
        self.baseline = baseline
        self.register_buffer("class_logits", torch.zeros(classes))  # p(y): uniform
        self.mode = "enumerate"
        self.baseline_options: dict = {}
        self.temperature = 1.0
        self.straight_through = False
        self.alpha = 0.0
        self.labelled_batch = 0
        self.register_buffer("labelled_x", None, persistent=False)
        self.register_buffer("labelled_y", None, persistent=False)
        self.register_buffer("is_labelled", None, persistent=False)

    def parameter_groups(self) -> dict:
        """The VAE's groups, and q(y|x)'s ``classifier``: where the estimators differ most."""
        return {**super().parameter_groups(), "classifier": list(self.classifier.parameters())}

    @property
    def values_per_draw(self) -> int:
        """As the VAE's, with q scored for every class, and M2's decoder run for every class."""
        decoded = self.likelihood.outputs * math.prod(self.data_shape) * (self.classes if self.shape == "m2" else 1)
        return decoded + self.prior.values_per_draw + self.posterior.values_per_draw * self.classes

    # --- configuration ---------------------------------------------------------------

    def use_estimator(self, estimator, kind: str) -> None:
        """Treat y as the estimator needs: its traits' ``discrete`` is one of MODES."""
        traits = traits_of(estimator)
        mode = traits.discrete
        if mode not in MODES:
            raise SpecError(
                f"inference.estimator: {kind} cannot handle model.discrete's categorical y (it needs every latent "
                "reparameterized); use trace_enum, trace_graph, trace_elbo or relaxed"
            )
        if traits.jit:
            raise SpecError(f"inference.estimator: {kind} with jit = true cannot trace model.discrete's data-dependent "
                            "labelled rows; set jit = false")
        self.mode = mode
        self.baseline_options = {}
        if mode == "score" and traits.baseline != "none":
            self.baseline_options = {"use_decaying_avg_baseline": True, "baseline_beta": traits.baseline_beta}
            if traits.baseline == "neural":
                self.baseline_options.update(nn_baseline=self.baseline)
        self.straight_through = traits.straight_through

    def supervise(self, x: Tensor, y: Tensor, rows: Tensor, alpha: float, batch: int) -> None:
        """Observe y on the labelled training examples x (rows ``rows`` of the N training
        examples); ``alpha`` weighs alpha * E_labelled[log q(y|x)]."""
        if len(x) == 0:
            return
        self.labelled_x, self.labelled_y = x, y.long()
        mask = torch.zeros(self.num_data, dtype=torch.bool, device=x.device)
        mask[rows.to(x.device)] = True
        self.is_labelled = mask
        self.alpha, self.labelled_batch = float(alpha), min(batch, len(x))

    # --- the distributions -----------------------------------------------------------

    def _flat(self, u: Tensor) -> Tensor:
        return u.reshape(*u.shape[: u.dim() - len(self.data_shape)], math.prod(self.data_shape))

    def one_hot(self, y: Tensor) -> Tensor:
        """One-hot y for integer classes; a relaxed sample is already a vector."""
        return y if y.is_floating_point() else F.one_hot(y, self.classes).to(self.class_logits.dtype)

    def q_y_logits(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder_input(x))

    def _z_encoded(self, u: Tensor, y: Tensor) -> Tensor:
        """The encoder's output for the encoder's input u and one-hot y (or u alone)."""
        return self.encoder(concatenated(self._flat(u), y) if self.encoder_reads_y else u)

    def q_z(self, u: Tensor, y: Tensor):
        """q(z|x, y) (or q(z|x)) from the encoder's input u and one-hot y."""
        return self.posterior(self._z_encoded(u, y))

    def p_z(self, y: Tensor):
        """p(z|y): the class's Gaussian (mixture), or the prior itself (M2)."""
        return self.prior.given(y) if self.shape == "mixture" else self.prior()

    def _decoded(self, z: Tensor, y: Tensor) -> Tensor:
        """The decoder's output for z (mixture) or z and y (M2)."""
        return self.decoder(z if self.shape == "mixture" else concatenated(z, y))

    def p_x_given(self, z: Tensor, y: Tensor, x: Optional[Tensor] = None):
        """p(x|z) (mixture) or p(x|y, z) (M2)."""
        return self.likelihood(self._decoded(z, y), **self._context(x))

    def _eye(self) -> Tensor:
        return torch.eye(self.classes, dtype=self.class_logits.dtype, device=self.class_logits.device)

    def q(self, x: Tensor):
        """The marginal q(z|x) = sum_y q(y|x) q(z|x, y), batch shape of x's examples."""
        u = self.encoder_input(x)
        if not self.encoder_reads_y:
            return self.q_z(u, None)
        components = self.q_z(u.unsqueeze(-len(self.data_shape) - 1), self._eye())
        return MarginalMixture(dist.Categorical(logits=self.classifier(u)), components)

    def p_x(self, z: Tensor, x: Optional[Tensor] = None):
        """p(x|z); for M2 the marginal sum_y p(y) p(x|y, z)."""
        if self.shape == "mixture":
            return super().p_x(z, x)
        components = self.p_x_given(z.unsqueeze(-2), self._eye(), None if x is None else x.unsqueeze(-len(self.data_shape) - 1))
        return dist.MixtureSameFamily(dist.Categorical(logits=self.class_logits), components)

    def decode_mean(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """E[x|z]; for M2 sum_y p(y) E[x|y, z]."""
        if self.shape == "mixture":
            return super().decode_mean(z, x)
        means = self.likelihood.mean(self._decoded(z.unsqueeze(-2), self._eye()))
        weights = torch.softmax(self.class_logits, -1).reshape(self.classes, *(1,) * len(self.data_shape))
        return (weights * means).sum(-len(self.data_shape) - 1)

    def _y_distribution(self, logits: Tensor):
        """The y site's distribution, p(y) or q(y|x), as the estimator treats y: categorical,
        or relaxed at the current temperature."""
        if self.mode == "relaxed":
            family = StraightThroughOneHot if self.straight_through else RelaxedOneHot
            return family(torch.tensor(self.temperature, device=logits.device), logits=logits)
        return dist.Categorical(logits=logits)

    # --- Pyro model and guide --------------------------------------------------------

    def _unlabelled(self, index: Optional[Tensor]):
        """Masks the batch's labelled rows (they enter through the labelled plate)."""
        if self.is_labelled is None or index is None:
            return nullcontext()
        return poutine.mask(mask=~self.is_labelled[index.to(self.is_labelled.device)])

    def _labelled_plate(self):
        return pyro.plate("labelled", len(self.labelled_x), subsample_size=self.labelled_batch,
                          device=self.labelled_x.device)

    def model(self, x: Tensor, index: Optional[Tensor] = None):
        """p(y) p(z|y) p(x|z) or p(y) p(z) p(x|y, z), y latent on unlabelled rows."""
        for part in ("prior", "likelihood", "decoder"):
            pyro.module(f"{self.name}_{part}", getattr(self, part))
        with self._plate(x, index), self._unlabelled(index):
            with poutine.scale(scale=self.beta):
                y = self.one_hot(pyro.sample("y", self._y_distribution(self.class_logits)))
                z = pyro.sample("z", self.p_z(y))
            pyro.sample("x", self.p_x_given(z, y, x), obs=x)
        if self.labelled_x is not None:
            with self._labelled_plate() as rows:
                xl, yl = self.labelled_x[rows], self.labelled_y[rows]
                pyro.sample("y_labelled", dist.Categorical(logits=self.class_logits), obs=yl)
                y = self.one_hot(yl)
                with poutine.scale(scale=self.beta):
                    z = pyro.sample("z_labelled", self.p_z(y))
                pyro.sample("x_labelled", self.p_x_given(z, y, xl), obs=xl)
                if self.alpha > 0:
                    log_q = dist.Categorical(logits=self.q_y_logits(xl)).log_prob(yl)
                    pyro.factor("classification", self.alpha / len(self.labelled_x) * log_q)

    def guide(self, x: Tensor, index: Optional[Tensor] = None):
        """q(y|x) q(z|x, y); y enumerated, sampled or relaxed as :meth:`use_estimator` set."""
        for part in ("encoder", "posterior", "classifier"):
            pyro.module(f"{self.name}_{part}", getattr(self, part))
        u = self.encoder_input(x)
        infer: dict = {}
        if self.mode == "enumerate":
            infer = {"enumerate": "parallel"}
        elif self.baseline_options:
            infer = {"baseline": dict(self.baseline_options)}
            if "nn_baseline" in infer["baseline"]:
                pyro.module(f"{self.name}_baseline", self.baseline)
                self.baseline.scale = (self.num_data or len(x)) / len(x)
                infer["baseline"]["nn_baseline_input"] = u
        with self._plate(x, index), self._unlabelled(index):
            with poutine.scale(scale=self.beta):
                y = self.one_hot(pyro.sample("y", self._y_distribution(self.classifier(u)), infer=infer))
                self._sample_z("z", u, y)
        if self.labelled_x is not None:
            with self._labelled_plate() as rows:
                ul = self.encoder_input(self.labelled_x[rows])
                with poutine.scale(scale=self.beta):
                    self._sample_z("z_labelled", ul, self.one_hot(self.labelled_y[rows]))

    def _sample_z(self, name: str, u: Tensor, y: Tensor) -> Tensor:
        h = self._z_encoded(u, y)
        return pyro.sample(name, self.posterior(h), infer={"stopped_log_prob": partial(self.posterior.stopped_log_prob, h)})

    # --- direct evaluation -----------------------------------------------------------

    @torch.no_grad()
    def sample_given(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(z, E[x|z, y]) for z ~ p(z|y), one draw per class in ``y`` (integers)."""
        y = self.one_hot(y)
        z = self.p_z(y).sample() if self.shape == "mixture" else self.prior().sample(y.shape[:-1])
        return z, self.likelihood.mean(self._decoded(z, y))

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(z, E[x|z, y]) for n draws y ~ p(y), z ~ p(z|y)."""
        return self.sample_given(dist.Categorical(logits=self.class_logits).sample((n,)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z, y] at one draw y ~ q(y|x), z ~ q(z|x, y)."""
        u = self.encoder_input(x)
        y = self.one_hot(dist.Categorical(logits=self.classifier(u)).sample())
        z = self.q_z(u, y).sample()
        return self.likelihood.mean(self._decoded(z, y), **self._context(x))


def build_discrete(spec, parts: dict, data_shape: tuple[int, ...], num_data, transform: str, stream) -> DiscreteVAE:
    """The DiscreteVAE of a ModelSpec with a ``discrete`` table; ``parts[slot](*sizes)``
    builds a slot's component, and ``with stream(name):`` gives a part its own random
    stream (see :mod:`pyro_vae.model.build`)."""
    discrete = spec.discrete
    classes, features = discrete.classes, math.prod(data_shape)
    if spec.encoder["kind"] == "conv" and discrete.encoder_reads_y:
        raise SpecError("model.encoder: with model.discrete the encoder reads x and one-hot y as one flat vector; "
                        "use mlp or gated_mlp, or set model.discrete.encoder_reads_y = false (model.discrete.classifier "
                        "may be conv)")
    if discrete.shape == "mixture" and spec.prior["kind"] != "standard_normal":
        raise SpecError(f"model.prior: {spec.prior['kind']} with model.discrete.shape = \"mixture\", whose p(z|y) is "
                        "its own Gaussian per class; remove model.prior or use shape = \"m2\"")
    if spec.prior["kind"] == "vamp":
        raise SpecError("model.prior: vamp runs the encoder on pseudo-inputs, but with model.discrete the encoder "
                        "also reads y; use standard_normal, learned_normal, mixture or flow")
    likelihood = parts["likelihood"](data_shape)
    posterior = parts["posterior"](spec.latent_dim)
    encoder_in = (features + classes,) if discrete.encoder_reads_y else data_shape
    encoder = parts["encoder"](encoder_in, (posterior.encoder_outputs,))
    decoder_in = spec.latent_dim + (classes if discrete.shape == "m2" else 0)
    decoder = parts["decoder"]((decoder_in,), (likelihood.outputs, *data_shape))
    if discrete.shape == "mixture":
        with stream("prior"):
            prior = ClassConditionalPrior(spec.latent_dim, classes)
    else:
        prior = parts["prior"](spec.latent_dim)
    try:
        with stream("classifier"):
            classifier = NETWORKS.build(discrete.classifier, data_shape, (classes,))
    except SpecError as exc:
        raise SpecError(f"model.discrete.classifier: {exc}") from None
    with stream("baseline"):
        baseline = Baseline(features)
    return DiscreteVAE(prior, likelihood, posterior, encoder, decoder, classifier, classes, discrete.shape, num_data,
                       input_transform=transform, baseline=baseline, encoder_reads_y=discrete.encoder_reads_y)
