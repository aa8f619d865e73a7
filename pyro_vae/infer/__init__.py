"""ELBO estimators, the SVI loop, evaluation, and estimator comparison."""

from .estimators import ESTIMATORS
from .optim import OPTIMIZERS, SingleOptimizer
from .train import Trainer, resume, train

__all__ = ["ESTIMATORS", "OPTIMIZERS", "SingleOptimizer", "Trainer", "resume", "train"]
