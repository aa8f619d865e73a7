"""A VAE from a model spec: each slot's component built from its registry and sized from
the data shape and the other slots; a ``discrete`` table gives the DiscreteVAE.

Each part draws its initial weights from a random stream of its own, seeded by one draw
from the global generator and the part's name. So a part starts the same whatever the
other parts are: two models that differ in their prior start with the same encoder and
decoder, and two that differ in their posterior's outputs share the encoder's hidden
layers. ``compare`` relies on it (common random numbers across the cells of a seed)."""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Optional

import torch

from ..errors import SpecError
from .discrete import build_discrete
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS
from .posteriors import POSTERIORS
from .priors import PRIORS
from .vae import VAE

MAX_PARAMETERS = 100_000_000


def build_vae(spec, data_shape: tuple[int, ...], num_data: Optional[int] = None) -> VAE:
    """A VAE from a ModelSpec, sized from the data shape: data -> likelihood -> decoder
    outputs; posterior -> encoder outputs. Refuses models over MAX_PARAMETERS before
    allocating them."""
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
        if getattr(spec, "discrete", None) is not None:
            return build_discrete(spec, parts, data_shape, num_data, transform, stream)
        posterior = parts["posterior"](spec.latent_dim)
        encoder = parts["encoder"](data_shape, (posterior.encoder_outputs,))
        decoder = parts["decoder"]((spec.latent_dim,), (likelihood.outputs, *data_shape))
        prior = parts["prior"](spec.latent_dim)
        return VAE(prior, likelihood, posterior, encoder, decoder, num_data, input_transform=transform)

    with torch.device("meta"):
        count = sum(p.numel() for p in build().parameters())
    if count > MAX_PARAMETERS:
        raise SpecError(
            f"model: {count:,} parameters for data of shape {data_shape} is over the limit of "
            f"{MAX_PARAMETERS:,}; use smaller hidden widths or latent_dim"
        )
    return build()
