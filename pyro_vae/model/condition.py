"""Conditioning on observed covariates c: the conditional VAE.

With covariates (``data.covariates``, coded by :mod:`pyro_vae.data.covariates` into one row
c of K columns per example: category codes and standardized continuous values), the model
and guide are

    p(x, z | c) = p(z | c) p(x | z, c),     q(z | x, c)

(Sohn et al., 2015, the CVAE; Lopez et al., 2018, scVI, whose decoder reads the batch):

* the **decoder** always reads c;
* the **encoder** reads c when ``model.condition.encoder`` (default; scVI's default for a
  batch is off, so that z is meant to hold what does not depend on it);
* the **prior** is p(z | c) = N(mu(c), diag sigma(c)^2), (mu, sigma) from the network
  ``model.condition.prior_network`` of c, when ``model.condition.prior`` (the CVAE's prior
  network); or p(z | c) = p_k(z), one prior of the prior slot's kind per category k of the
  covariate ``model.condition.prior_per_category`` (:class:`PerCategoryPrior`); else the
  prior slot's p(z).

In the latent structure (:mod:`pyro_vae.model.layers`, :mod:`pyro_vae.model.categorical`)
this is, for stacked layers, p(z_L | c) prod p(z_l | z_(l+1), c) p(x | z_1, c) with every
layer's guide network reading c (where the encoder does) and each p(z_l | z_(l+1), c) reading
it where the prior network does; with a categorical y, q(y | x, c) (the classifier reads c
where the encoder does) and p(x | y, z, c) for M2. Where every class is computed at once
(the marginals over y), c is read with a class dimension (``VAE._per_class``).

A network reads c as features f(c): per categorical covariate one-hot (``embedding_dim = 0``)
or a learned embedding of ``embedding_dim`` values, per continuous covariate its value.
f(c) enters the network as a linear term added to its first linear map, W [h; f] =
W_h h + W_f f (the same as concatenating f to the input; for a conv network the linear map
after the convolutions, or the decoder's first); with ``inject = "every_layer"`` to every
hidden layer's linear map (scvi-tools' ``deeply_inject_covariates``).

How c reaches the networks: the VAE's methods take ``condition=`` (a tensor (n, K), or None
for the training rows ``index`` in model and guide); :func:`conditioned` sets it on the
model's :class:`Conditioning` for the method's duration, and the conditioned networks and the
conditional prior read it there. So the walk of the model and guide (and every estimator,
the compiled step, the stopped log q of STL and DReG, which keeps the c it was made under)
is unchanged. The labelled plate of semi-supervised training reads its own rows' c.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from typing import Optional, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..errors import SpecError
from .layers import ConditionalNormal
from .networks import ConvNet, GatedLinear, _Stacked
from .priors import Prior

class Conditioning(nn.Module):
    """Where c is, for the conditioned parts of one VAE: ``current`` while a conditioned
    method runs, and the training split's c (``observed``, a non-persistent buffer) that
    model and guide index with the batch's rows. ``layout``: per covariate its number of
    categories, 0 for a continuous one."""

    def __init__(self, layout: Sequence[int], encoder: bool = True, prior: bool = False):
        super().__init__()
        self.layout, self.encoder, self.prior = list(layout), encoder, prior
        self.current: Optional[Tensor] = None
        self.register_buffer("observed", None, persistent=False)

    @property
    def columns(self) -> int:
        return len(self.layout)

    def observe(self, c: Tensor) -> None:
        """The training split's c, row i for training example i."""
        self.observed = c.to(torch.float32)

    @contextmanager
    def given(self, c: Optional[Tensor]):
        previous, self.current = self.current, c
        try:
            yield
        finally:
            self.current = previous

    def read(self) -> Tensor:
        if self.current is None:
            raise ValueError("this model conditions on covariates: pass condition= (a tensor of one row of "
                             f"{self.columns} coded covariates per example)")
        return self.current


def conditioned(method):
    """A VAE method that takes ``condition=`` (c, (n, K)): it runs with c set for the
    conditioned parts. ``model`` and ``guide`` without it read the training rows ``index``;
    other methods without it keep the c of an enclosing conditioned call. A VAE without
    covariates refuses a condition."""

    @functools.wraps(method)
    def wrapper(self, *args, condition: Optional[Tensor] = None, **kwargs):
        conditioning = getattr(self, "conditioning", None)
        if conditioning is None:
            if condition is not None:
                raise ValueError("this model has no covariates; call it without condition=")
            return method(self, *args, **kwargs)
        if condition is None and method.__name__ in ("model", "guide"):
            index = args[1] if len(args) > 1 else kwargs.get("index")
            if index is not None and conditioning.observed is not None:
                condition = conditioning.observed[index.to(conditioning.observed.device)]
        if condition is None:
            condition = conditioning.current
        if condition is not None:
            condition = torch.as_tensor(condition, **_like(self))
            if condition.shape[-1:] != (conditioning.columns,):
                raise ValueError(f"condition has shape {tuple(condition.shape)}; expected (n, {conditioning.columns}), "
                                 "one row of coded covariates per example")
        with conditioning.given(condition):
            return method(self, *args, **kwargs)

    return wrapper


def given(vae, c: Optional[Tensor]):
    """A context in which ``vae``'s conditioned parts read c (nothing to do without covariates
    or without c)."""
    conditioning = getattr(vae, "conditioning", None)
    if conditioning is None or c is None:
        return nullcontext()
    return conditioning.given(c.to(**_like(vae)))


def prior_reads_condition(vae) -> bool:
    """Whether the prior is p(z | c), one distribution per example."""
    conditioning = getattr(vae, "conditioning", None)
    return conditioning is not None and conditioning.prior


def _like(module: nn.Module) -> dict:
    """The dtype and device of the module's parameters, which c is given in."""
    for p in module.parameters():
        return {"dtype": p.dtype, "device": p.device}
    return {"dtype": torch.float32, "device": torch.device("cpu")}


class CovariateFeatures(nn.Module):
    """f(c): per categorical covariate its one-hot vector (``embedding_dim = 0``) or a learned
    embedding, per continuous covariate its value, concatenated (size ``size``)."""

    def __init__(self, layout: Sequence[int], embedding_dim: int = 0):
        super().__init__()
        self.layout, self.embedding_dim = list(layout), embedding_dim
        self.embeddings = nn.ModuleDict({str(i): nn.Embedding(k, embedding_dim)
                                         for i, k in enumerate(self.layout) if k and embedding_dim})
        self.size = sum((embedding_dim or k) if k else 1 for k in self.layout)

    def forward(self, c: Tensor) -> Tensor:
        parts = []
        for i, k in enumerate(self.layout):
            column = c[..., i]
            if not k:
                parts.append(column.unsqueeze(-1))
                continue
            codes = column.round().long().clamp(0, k - 1)
            if self.embedding_dim:
                parts.append(self.embeddings[str(i)](codes))
            else:  # one-hot by comparison (F.one_hot checks the values, which a traced step cannot)
                parts.append((codes.unsqueeze(-1) == torch.arange(k, device=c.device)).to(c.dtype))
        return torch.cat(parts, -1)


class ConditionedNetwork(nn.Module):
    """``network`` (an mlp, gated_mlp or conv) whose linear maps also read f(c): see the module
    docstring. ``network``'s own parameters keep their initial values, so that the part starts
    as its unconditional counterpart does, plus a term in c (the new maps' default start)."""

    def __init__(self, network: nn.Module, conditioning: Conditioning, embedding_dim: int = 0, inject: str = "input",
                 where: str = "decoder"):
        super().__init__()
        self.network, self.features = network, CovariateFeatures(conditioning.layout, embedding_dim)
        self.conditioning = [conditioning]  # a list: not a submodule (the VAE holds it)
        self.in_shape, self.out_shape = network.in_shape, network.out_shape
        if isinstance(network, _Stacked):
            maps = [(i, m) for i, m in enumerate(network.net) if isinstance(m, (nn.Linear, GatedLinear))]
            hidden = maps[:-1] or maps  # the output map only where there is no hidden layer
            targets = hidden if inject == "every_layer" else hidden[:1]
            self.targets = {i: (m.linear.out_features if isinstance(m, GatedLinear) else m.out_features) for i, m in targets}
        elif isinstance(network, ConvNet):
            if inject == "every_layer":
                raise SpecError(f"model.condition.inject = \"every_layer\" with a conv {where}: only mlp and gated_mlp "
                                "have hidden linear layers to inject into; use inject = \"input\" or an mlp")
            first = network.stem if network.decoding else network.head
            self.targets = {-1: first.out_features}
        else:
            raise SpecError(f"model.{where}: {type(network).__name__} cannot read covariates (model.condition needs an "
                            "mlp, gated_mlp or conv network); change the network kind")
        self.inject = nn.ModuleDict({str(i): nn.Linear(self.features.size, width, bias=False)
                                     for i, width in self.targets.items()})

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(self.conditioning[0].read())
        network = self.network
        batch = x.shape[: x.dim() - len(network.in_shape)]
        if isinstance(network, ConvNet):
            added = self.inject["-1"](f).expand(*batch, -1).reshape(-1, self.targets[-1])
            flat = x.reshape(-1, *network.in_shape)
            if network.decoding:
                h = (network.stem(flat.reshape(len(flat), -1)) + added).reshape(-1, network.first, *network.small)
                y = network.body(h)[..., : network.image[1], : network.image[2]]
            else:
                y = network.head(network.body(flat.reshape(-1, *network.image))) + added
            return network.shaped_out(y, batch)
        h = network.flat_in(x)
        for i, m in enumerate(network.net):
            if i not in self.targets:
                h = m(h)
            elif isinstance(m, GatedLinear):
                h = m.gate(m.linear(h) + self.inject[str(i)](f))
            else:
                h = m(h) + self.inject[str(i)](f)
        return network.shaped_out(h, h.shape[:-1])


class ConditionalPrior(Prior):
    """p(z | c) = N(mu(c), diag sigma(c)^2), (mu, raw sigma) the network's 2 D outputs of f(c)
    (sigma = softplus + a floor, as :class:`~pyro_vae.model.layers.ConditionalNormal`)."""

    def __init__(self, latent_dim: int, network: nn.Module, conditioning: Conditioning, embedding_dim: int = 0):
        super().__init__(latent_dim)
        self.features = CovariateFeatures(conditioning.layout, embedding_dim)
        self.normal = ConditionalNormal(network, latent_dim)
        self.conditioning = [conditioning]

    @property
    def values_per_draw(self) -> int:
        return 3 * self.latent_dim

    def forward(self) -> dist.Distribution:
        return self.normal(self.features(self.conditioning[0].read()))


class CategorySelected(dist.TorchDistribution):
    """p_(k_b)(z_b) for each row b: of K distributions over z (event shape (D,), each
    broadcasting over the batch), the one each row's code k_b in ``codes`` (batch shape)
    selects. ``log_prob`` scores the value under all K and picks each row's; draws are each
    row's own component's (reparameterized where every component is)."""

    arg_constraints: dict = {}
    support = dist.constraints.real_vector

    def __init__(self, components: Sequence[dist.Distribution], codes: Tensor):
        self.components, self.codes = list(components), codes
        event = self.components[0].event_shape
        super().__init__(codes.shape, event, validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return all(c.has_rsample for c in self.components)

    def _pick(self, values: Tensor, event: int) -> Tensor:
        """Each row's own of K stacked values (..., B, K, *event)."""
        index = self.codes.reshape(*self.codes.shape, 1, *(1,) * event)
        index = index.expand(*values.shape[: values.dim() - event - 2], *self.codes.shape, 1, *values.shape[values.dim() - event:])
        return values.gather(-1 - event, index).squeeze(-1 - event)

    def log_prob(self, value: Tensor) -> Tensor:
        return self._pick(torch.stack([c.log_prob(value) for c in self.components], -1), 0)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        draws = [c.rsample(shape) if self.has_rsample else c.sample(shape) for c in self.components]
        return self._pick(torch.stack(draws, -2), 1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class PerCategoryPrior(Prior):
    """p(z | c) = p_k(z): one prior of any kind per category k of the covariate in column
    ``column`` of c (``model.condition.prior_per_category``), each with its own parameters
    (a VampPrior's own pseudo-inputs, a mixture's own components...)."""

    def __init__(self, priors: Sequence[Prior], conditioning: Conditioning, column: int):
        super().__init__(priors[0].latent_dim)
        self.priors = nn.ModuleList(priors)
        self.conditioning, self.column = [conditioning], column

    def bind(self, vae) -> None:
        for prior in self.priors:
            prior.bind(vae)

    @property
    def values_per_draw(self) -> int:
        return sum(p.values_per_draw for p in self.priors) + len(self.priors)

    def forward(self) -> dist.Distribution:
        codes = self.conditioning[0].read()[..., self.column].round().long().clamp(0, len(self.priors) - 1)
        return CategorySelected([prior() for prior in self.priors], codes)


def check_supported(spec) -> None:
    """Refuse in one line what conditioning cannot build."""
    condition = getattr(spec, "condition", None)
    discrete = getattr(spec, "discrete", None)
    if spec.prior["kind"] == "vamp" and (condition is None or condition.encoder):
        raise SpecError("model.prior: vamp runs the encoder on pseudo-inputs, which have no covariates; set "
                        "model.condition.encoder = false, or use another prior")
    if condition is not None and condition.prior and spec.prior["kind"] != "standard_normal":
        raise SpecError(f"model.condition.prior = true replaces the prior slot by p(z | c); remove model.prior "
                        f"({spec.prior['kind']}) or set model.condition.prior = false")
    if condition is not None and condition.prior_per_category is not None and discrete is not None \
            and discrete.shape == "mixture":
        raise SpecError("model.condition.prior_per_category with model.discrete.shape = \"mixture\", whose p(z|y) is "
                        "the prior of z; remove prior_per_category or use shape = \"m2\"")
    if condition is not None and condition.prior and discrete is not None and discrete.shape == "mixture":
        raise SpecError("model.condition.prior = true with model.discrete.shape = \"mixture\", whose p(z|y) is the "
                        "prior of z; set model.condition.prior = false (the decoder and encoder still read c) or use "
                        "shape = \"m2\"")
    if discrete is not None and discrete.init == "vade":
        raise SpecError("model.discrete.init = \"vade\" pretrains without covariates; use init = \"random\" with "
                        "data.covariates")


def condition_features(layout: Sequence[int], embedding_dim: int) -> int:
    """The size of f(c) (see :class:`CovariateFeatures`)."""
    return sum((embedding_dim or k) if k else 1 for k in layout)


def build_conditioned(spec, layout: Sequence[int], encoder: nn.Module, decoder: nn.Module, prior: Prior, latent_dim: int,
                      stream, networks, upper: Sequence = (), classifier: Optional[nn.Module] = None,
                      build_prior=None) -> tuple[Conditioning, nn.Module, nn.Module, Prior, Optional[nn.Module]]:
    """The conditioned parts of a model spec, for covariates of ``layout``: the decoder; where
    ``model.condition.encoder``, every guide network (the bottom encoder, each upper layer's
    encoder in ``upper``, which are replaced in place, and q(y|x)'s ``classifier``: q(y|x, c));
    where ``model.condition.prior``, the prior of the top layer, p(z_L | c), and each upper
    layer's p(z_l | z_(l+1), c), so that the whole p(z | c) reads c; where
    ``model.condition.prior_per_category``, one prior per category, ``build_prior(k)`` the k-th."""
    options = spec.condition
    if options is None:
        raise SpecError("model.condition: covariates are given, and the model spec has no [model.condition] table; "
                        "add one (its defaults: the decoder and encoder read c)")
    check_supported(spec)
    per_category = options.prior_per_category
    conditioning = Conditioning(layout, options.encoder, options.prior or per_category is not None)

    def wrap(network, name, where, inject="input"):
        with stream(f"condition.{name}"):
            return ConditionedNetwork(network, conditioning, options.embedding_dim, inject, where)

    decoder = wrap(decoder, "decoder", "decoder", options.inject)
    L = 1 + len(upper)
    for i, layer in enumerate(upper):
        name = f"upper_layers.{L - 2 - i}"  # the spec lists the layers top first
        if options.encoder:
            layer.encoder = wrap(layer.encoder, f"{name}.encoder", f"{name}.encoder")
        if options.prior:
            layer.down.network = wrap(layer.down.network, f"{name}.prior_network", f"{name}.prior_network")
    if options.encoder:
        encoder = wrap(encoder, "encoder", "encoder")
        if classifier is not None:
            classifier = wrap(classifier, "classifier", "discrete.classifier")
    if options.prior:
        try:
            with stream("condition.prior"):
                network = networks.build(options.prior_network, (condition_features(layout, options.embedding_dim),),
                                         (2 * latent_dim,))
                prior = ConditionalPrior(latent_dim, network, conditioning, options.embedding_dim)
        except SpecError as exc:
            raise SpecError(f"model.condition.prior_network: {exc}") from None
    if per_category is not None:
        column = options._prior_column
        if column is None or column >= len(layout):
            raise SpecError(f"model.condition.prior_per_category names {per_category!r}, and the covariates are not "
                            "named here; build the model from a whole spec (its data.covariates)")
        if not layout[column]:
            raise SpecError(f"model.condition.prior_per_category: {per_category!r} is continuous; name a categorical "
                            f"covariate (or force it with data.covariate_kinds.{per_category} = \"categorical\")")
        prior = PerCategoryPrior([build_prior(k) for k in range(layout[column])], conditioning, column)
    return conditioning, encoder, decoder, prior, classifier
