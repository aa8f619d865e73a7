"""A VAE from a model spec: each slot's component built from its registry and sized from
the data shape and the other slots; a ``discrete`` table gives the DiscreteVAE.

Each part draws its initial weights from a random stream of its own, seeded by one draw
from the global generator and the part's name. So a part starts the same whatever the
other parts are: two models that differ in their prior start with the same encoder and
decoder, and two that differ in their posterior's outputs share the encoder's hidden
layers. ``compare`` relies on it (common random numbers across the cells of a seed)."""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from typing import Optional, Sequence

import torch

from ..errors import SpecError
from .condition import build_conditioned, check_supported
from .discrete import build_discrete
from .layers import ConditionalNormal, Structure, UpperLayer
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS
from .posteriors import POSTERIORS
from .priors import PRIORS
from .vae import VAE

MAX_PARAMETERS = 100_000_000


def build_vae(spec, data_shape: tuple[int, ...], num_data: Optional[int] = None, covariates: Sequence[int] = ()) -> VAE:
    """A VAE from a ModelSpec, sized from the data shape: data -> likelihood -> decoder
    outputs; posterior -> encoder outputs. ``covariates``: the layout of the covariates the
    model conditions on (per covariate its categories, 0 for a continuous one; see
    model/condition.py). Refuses models over MAX_PARAMETERS before allocating them."""
    if getattr(spec, "condition", None) is not None and not covariates:
        raise SpecError("model.condition: the model conditions on covariates, and data.covariates names none; set "
                        "data.covariates (--set 'data.covariates=[\"batch\"]', or [\"label\"] for a data set's labels) "
                        "or remove model.condition")
    data_shape = tuple(data_shape)
    base_seed = int(torch.randint(2**31, (), device="cpu"))  # the one draw from the global generator

    @contextmanager
    def stream(name: str):
        """The part ``name``'s own random stream while it is built."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(base_seed + zlib.crc32(name.encode()))
            yield

    def part(slot, registry):
        def build_part(*sizes):
            try:
                with stream(slot):
                    return registry.build(getattr(spec, slot), *sizes)
            except SpecError as exc:
                raise SpecError(f"model.{slot}: {exc}") from None

        return build_part

    parts = {"likelihood": part("likelihood", LIKELIHOODS), "posterior": part("posterior", POSTERIORS),
             "encoder": part("encoder", NETWORKS), "decoder": part("decoder", NETWORKS), "prior": part("prior", PRIORS)}

    def build():
        transform = getattr(spec, "encoder_input", "auto")
        likelihood = parts["likelihood"](data_shape)
        if transform == "log1p" and likelihood.domain_bounds[0] is None:
            raise SpecError(
                f"model.encoder_input = \"log1p\" needs non-negative data, but the {spec.likelihood['kind']} likelihood "
                "models any real value; use it with count or [0, 1] likelihoods, or set model.encoder_input = \"auto\""
            )
        upper_specs = getattr(spec, "upper_layers", [])
        if covariates:
            check_supported(spec)
        if getattr(spec, "discrete", None) is not None:
            if upper_specs:
                raise SpecError("model.upper_layers: stacked layers with model.discrete are not supported yet; "
                                "remove one of the two")
            return build_discrete(spec, parts, data_shape, num_data, transform, stream)
        posterior = parts["posterior"](spec.latent_dim)
        if not upper_specs:
            encoder = parts["encoder"](data_shape, (posterior.encoder_outputs,))
            decoder = parts["decoder"]((spec.latent_dim,), (likelihood.outputs, *data_shape))
            prior = parts["prior"](spec.latent_dim)
            if covariates:
                return conditional_vae(spec, covariates, prior, likelihood, posterior, encoder, decoder, num_data,
                                       transform, stream)
            return VAE(prior, likelihood, posterior, encoder, decoder, num_data, input_transform=transform)
        return build_layers(spec, parts, likelihood, posterior, data_shape, num_data, transform, stream)

    with torch.device("meta"):
        count = sum(p.numel() for p in build().parameters())
    if count > MAX_PARAMETERS:
        raise SpecError(
            f"model: {count:,} parameters for data of shape {data_shape} is over the limit of "
            f"{MAX_PARAMETERS:,}; use smaller hidden widths or latent_dim"
        )
    return build()


def conditional_vae(spec, covariates, prior, likelihood, posterior, encoder, decoder, num_data, transform, stream) -> VAE:
    """A one-layer VAE whose parts read the covariates c (see model/condition.py)."""
    conditioning, encoder, decoder, prior = build_conditioned(spec, covariates, encoder, decoder, prior, spec.latent_dim,
                                                              stream, NETWORKS)
    vae = VAE(prior, likelihood, posterior, encoder, decoder, num_data, input_transform=transform)
    vae.conditioning = conditioning
    return vae


def build_layers(spec, parts: dict, likelihood, bottom_posterior, data_shape, num_data, transform, stream) -> VAE:
    """A VAE with ``spec.upper_layers`` above its bottom layer z_1 (see model/layers.py), each
    layer's networks sized by the guide's ``inference_network``: in ``bottom_up`` layer l's
    encoder reads z_(l-1), in ``top_down`` x and z_(l+1) (the top layer x alone), in the
    ``ladder`` the layer below's encoder output."""
    guide = spec.inference_network
    upper_specs = list(reversed(spec.upper_layers))  # bottom first: layer 2, 3, ..., L
    dims = [spec.latent_dim] + [layer.latent_dim for layer in upper_specs]
    L, features = len(dims), math.prod(data_shape)
    if guide == "ladder":
        kinds = [spec.posterior["kind"]] + [layer.posterior["kind"] for layer in upper_specs[:-1]]
        if any(kind != "diagonal_normal" for kind in kinds):
            raise SpecError("model.inference_network = \"ladder\" merges each layer below the top with its "
                            "Gaussian p(z_l | z_(l+1)): those layers need posterior diagonal_normal (only the top "
                            "layer's may be another kind); change the posteriors or use bottom_up")
    if guide == "bottom_up" and spec.prior["kind"] == "vamp":
        raise SpecError("model.prior: vamp scores the top layer under q(z_L | pseudo-input), which the bottom_up guide "
                        "does not have (its q(z_L) reads z_(L-1)); set model.inference_network = \"top_down\" or \"ladder\"")

    def built(what: str, registry, table, *sizes):
        try:
            with stream(what):
                return registry.build(table, *sizes)
        except SpecError as exc:
            raise SpecError(f"model.{what}: {exc}") from None

    posteriors = [bottom_posterior] + [built(f"upper_layers.{L - 1 - i}.posterior", POSTERIORS, upper_specs[i - 1].posterior, dims[i])
                                       for i in range(1, L)]

    def encoder_in(i: int) -> tuple[int, ...]:
        if guide == "bottom_up":
            return data_shape if i == 0 else (dims[i - 1],)
        if guide == "top_down":
            return data_shape if i == L - 1 else (features + dims[i + 1],)
        return data_shape if i == 0 else (posteriors[i - 1].encoder_outputs,)

    encoder = parts["encoder"](encoder_in(0), (bottom_posterior.encoder_outputs,))
    upper = []
    for i in range(1, L):
        where = f"upper_layers.{L - 1 - i}"  # the spec lists the layers top first
        layer_encoder = built(f"{where}.encoder", NETWORKS, upper_specs[i - 1].encoder, encoder_in(i),
                              (posteriors[i].encoder_outputs,))
        down = built(f"{where}.prior_network", NETWORKS, upper_specs[i - 1].prior_network, (dims[i],), (2 * dims[i - 1],))
        upper.append(UpperLayer(layer_encoder, posteriors[i], ConditionalNormal(down, dims[i - 1])))
    decoder_in = dims[0] if spec.decoder_reads == "bottom" else sum(dims)
    decoder = parts["decoder"]((decoder_in,), (likelihood.outputs, *data_shape))
    prior = parts["prior"](dims[-1])
    return VAE(prior, likelihood, bottom_posterior, encoder, decoder, num_data, input_transform=transform, upper=upper,
               structure=Structure(guide, spec.decoder_reads))
