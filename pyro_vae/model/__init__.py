"""p(z), p(x|z), q(z|x), the networks, and the VAE's Pyro model and guide."""

from .build import build_vae
from .likelihoods import LIKELIHOODS, Likelihood
from .networks import NETWORKS, Network
from .posteriors import POSTERIORS, Posterior
from .priors import PRIORS, Prior
from .vae import VAE, ImportanceTerms

__all__ = [
    "LIKELIHOODS",
    "NETWORKS",
    "POSTERIORS",
    "PRIORS",
    "VAE",
    "ImportanceTerms",
    "Likelihood",
    "Network",
    "Posterior",
    "Prior",
    "build_vae",
]
