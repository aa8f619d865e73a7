"""A VAE from a model spec: each slot's component built from its registry and sized from
the data shape and the other slots, in the latent structure the spec declares (stacked
layers, a categorical y).

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
from .categorical import SHAPES, Baseline, CategoricalY, ClassConditionalPrior
from .condition import build_conditioned, check_supported
from .layers import ConditionalNormal, Structure, UpperLayer
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS
from .posteriors import POSTERIORS
from .priors import PRIORS
from .vae import VAE

MAX_PARAMETERS = 100_000_000


class Streams:
    """Each part's own random stream (see the module docstring): while ``name`` is built,
    torch's generator is seeded with ``base_seed`` + crc32(``name``), and restored after."""

    def __init__(self, base_seed: int):
        self.base_seed = base_seed

    @contextmanager
    def __call__(self, name: str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.base_seed + zlib.crc32(name.encode()))
            yield

    def build(self, name: str, registry, table, *sizes, key: Optional[str] = None):
        """``registry.build(table, *sizes)`` in the stream ``name``; its errors name
        ``model.<key>`` (``key``: the spec's key for the part, where it is not ``name``)."""
        try:
            with self(name):
                return registry.build(table, *sizes)
        except SpecError as exc:
            raise SpecError(f"model.{key or name}: {exc}") from None


def build_vae(spec, data_shape: tuple[int, ...], num_data: Optional[int] = None, covariates: Sequence[int] = ()) -> VAE:
    """A VAE from a ModelSpec, sized from the data shape: data -> likelihood -> decoder
    outputs; posterior -> encoder outputs. ``covariates``: the layout of the covariates the
    model conditions on (per covariate its categories, 0 for a continuous one; see
    model/condition.py). Refuses models over MAX_PARAMETERS before allocating them: the
    model is first built on the meta device (shapes, no memory) and counted, then built
    for real (a model cannot be moved off the meta device with its initial values)."""
    if getattr(spec, "condition", None) is not None and not covariates:
        raise SpecError("model.condition: the model conditions on covariates, and data.covariates names none; set "
                        "data.covariates (--set 'data.covariates=[\"batch\"]', or [\"label\"] for a data set's labels) "
                        "or remove model.condition")
    data_shape = tuple(data_shape)
    streams = Streams(int(torch.randint(2**31, (), device="cpu")))  # the one draw from the global generator
    with torch.device("meta"):
        count = sum(p.numel() for p in _build(spec, data_shape, num_data, covariates, streams).parameters())
    if count > MAX_PARAMETERS:
        raise SpecError(
            f"model: {count:,} parameters for data of shape {data_shape} is over the limit of "
            f"{MAX_PARAMETERS:,}; use smaller hidden widths or latent_dim"
        )
    return _build(spec, data_shape, num_data, covariates, streams)


def _build(spec, data_shape: tuple[int, ...], num_data, covariates: Sequence[int], streams: Streams) -> VAE:
    """The VAE of :func:`build_vae`, its parts drawn from ``streams`` (the same values at
    every call with the same streams: the meta dry run and the real build agree)."""
    transform = getattr(spec, "encoder_input", "auto")
    likelihood = streams.build("likelihood", LIKELIHOODS, spec.likelihood, data_shape)
    if transform == "log1p" and likelihood.domain_bounds[0] is None:
        raise SpecError(
            f"model.encoder_input = \"log1p\" needs non-negative data, but the {spec.likelihood['kind']} likelihood "
            "models any real value; use it with count or [0, 1] likelihoods, or set model.encoder_input = \"auto\""
        )
    if covariates:
        check_supported(spec)
    return build_structure(spec, likelihood, data_shape, num_data, transform, streams, covariates)


def categorical_y(spec) -> Optional[CategoricalY]:
    """y's place in the structure from the spec's ``discrete`` table (None without one)."""
    discrete = getattr(spec, "discrete", None)
    if discrete is None:
        return None
    return CategoricalY(discrete.classes, SHAPES[discrete.shape], discrete.encoder_reads_y)


def check_structure(spec, y: Optional[CategoricalY]) -> None:
    """Refuses, in one line each, the structures the model cannot build."""
    guide, upper_specs = spec.inference_network, spec.upper_layers
    if upper_specs and guide == "ladder":
        kinds = [spec.posterior["kind"]] + [layer.posterior["kind"] for layer in list(reversed(upper_specs))[:-1]]
        if any(kind != "diagonal_normal" for kind in kinds):
            raise SpecError("model.inference_network = \"ladder\" merges each layer below the top with its "
                            "Gaussian p(z_l | z_(l+1)): those layers need posterior diagonal_normal (only the top "
                            "layer's may be another kind); change the posteriors or use bottom_up")
    if upper_specs and guide == "bottom_up" and spec.prior["kind"] == "vamp":
        raise SpecError("model.prior: vamp scores the top layer under q(z_L | pseudo-input), which the bottom_up guide "
                        "does not have (its q(z_L) reads z_(L-1)); set model.inference_network = \"top_down\" or \"ladder\"")
    if y is None:
        return
    if y.encoder_reads_y and upper_specs:
        raise SpecError("model.discrete.encoder_reads_y: with model.upper_layers the guide is q(y|x) q(z_1, ..., z_L|x), "
                        "its encoders reading x alone; set model.discrete.encoder_reads_y = false")
    if spec.discrete.init == "vade" and upper_specs:
        raise SpecError("model.discrete.init = \"vade\" fits its mixture to one layer's codes; remove "
                        "model.upper_layers or use init = \"random\"")
    if y.encoder_reads_y and spec.encoder["kind"] == "conv":
        raise SpecError("model.encoder: with model.discrete the encoder reads x and one-hot y as one flat vector; "
                        "use mlp or gated_mlp, or set model.discrete.encoder_reads_y = false (model.discrete.classifier "
                        "may be conv)")
    if y.feeds == "prior" and spec.prior["kind"] != "standard_normal":
        raise SpecError(f"model.prior: {spec.prior['kind']} with model.discrete.shape = \"mixture\", whose p(z|y) is "
                        "its own Gaussian per class; remove model.prior or use shape = \"m2\"")
    if spec.prior["kind"] == "vamp":
        raise SpecError("model.prior: vamp runs the encoder on pseudo-inputs, but with model.discrete the encoder "
                        "also reads y; use standard_normal, learned_normal, mixture or flow")


def build_structure(spec, likelihood, data_shape, num_data, transform, streams: Streams,
                    covariates: Sequence[int] = ()) -> VAE:
    """A VAE with the spec's structure: the bottom layer z_1 (the model's own latent_dim,
    posterior and encoder), ``spec.upper_layers`` above it (see model/layers.py), each
    layer's networks sized by the guide's ``inference_network`` (in ``bottom_up`` layer l's
    encoder reads z_(l-1), in ``top_down`` x and z_(l+1) (the top layer x alone), in the
    ``ladder`` the layer below's encoder output), and a categorical y on top (``discrete``,
    model/categorical.py: the bottom encoder reads x and one-hot y where the guide is
    q(z|x, y), the decoder z and y where y feeds it, and the top layer's prior is p(z_L|y)
    where y feeds the prior). With ``covariates``, the parts read them (model/condition.py:
    the decoder, and as ``model.condition`` says every guide network and every layer's prior)."""
    y = categorical_y(spec)
    check_structure(spec, y)
    guide = spec.inference_network
    upper_specs = list(reversed(spec.upper_layers))  # bottom first: layer 2, 3, ..., L
    dims = [spec.latent_dim] + [layer.latent_dim for layer in upper_specs]
    L, features = len(dims), math.prod(data_shape)
    classes = y.classes if y is not None else 0
    posteriors = [streams.build("posterior", POSTERIORS, spec.posterior, dims[0])] + [
        streams.build(f"upper_layers.{L - 1 - i}.posterior", POSTERIORS, upper_specs[i - 1].posterior, dims[i])
        for i in range(1, L)]

    def encoder_in(i: int) -> tuple[int, ...]:
        if i == 0 and y is not None and y.encoder_reads_y:
            return (features + classes,)
        if guide == "bottom_up":
            return data_shape if i == 0 else (dims[i - 1],)
        if guide == "top_down":
            return data_shape if i == L - 1 else (features + dims[i + 1],)
        return data_shape if i == 0 else (posteriors[i - 1].encoder_outputs,)

    encoder = streams.build("encoder", NETWORKS, spec.encoder, encoder_in(0), (posteriors[0].encoder_outputs,))
    upper = []
    for i in range(1, L):
        where = f"upper_layers.{L - 1 - i}"  # the spec lists the layers top first
        layer_encoder = streams.build(f"{where}.encoder", NETWORKS, upper_specs[i - 1].encoder, encoder_in(i),
                                      (posteriors[i].encoder_outputs,))
        down = streams.build(f"{where}.prior_network", NETWORKS, upper_specs[i - 1].prior_network, (dims[i],),
                             (2 * dims[i - 1],))
        upper.append(UpperLayer(layer_encoder, posteriors[i], ConditionalNormal(down, dims[i - 1])))
    y_to_decoder = classes if y is not None and y.feeds == "decoder" else 0
    decoder_in = (dims[0] if spec.decoder_reads == "bottom" else sum(dims)) + y_to_decoder
    decoder = streams.build("decoder", NETWORKS, spec.decoder, (decoder_in,), (likelihood.outputs, *data_shape))
    classifier = baseline = None
    if y is not None and y.feeds == "prior":
        with streams("prior"):
            prior = ClassConditionalPrior(dims[-1], classes, spec.discrete.covariance)
    else:
        prior = streams.build("prior", PRIORS, spec.prior, dims[-1])
    if y is not None:
        classifier = streams.build("classifier", NETWORKS, spec.discrete.classifier, data_shape, (classes,),
                                   key="discrete.classifier")
        with streams("baseline"):
            baseline = Baseline(features)
    conditioning = None
    if covariates:
        conditioning, encoder, decoder, prior, classifier = build_conditioned(
            spec, covariates, encoder, decoder, prior, dims[-1], streams, NETWORKS, upper, classifier,
            lambda k: streams.build(f"prior.{k}", PRIORS, spec.prior, dims[-1]))
    vae = VAE(prior, likelihood, posteriors[0], encoder, decoder, num_data, input_transform=transform, upper=upper,
              structure=Structure(guide, spec.decoder_reads, y), classifier=classifier, baseline=baseline)
    if conditioning is not None:
        vae.conditioning = conditioning
    return vae
