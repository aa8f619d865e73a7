"""Computation only: ELBO estimators, the optimizer, the SVI loop (:class:`Trainer`),
importance-sampled evaluation, latent codes and gradient statistics. Nothing here reads
or writes a run directory (that is :mod:`pyro_vae.workflows`)."""

from .estimators import ESTIMATORS
from .optim import OPTIMIZERS, SingleOptimizer
from .train import Trainer

__all__ = ["ESTIMATORS", "OPTIMIZERS", "SingleOptimizer", "Trainer"]
