"""The figures of an evaluation: dataset means with their standard errors, active units,
and how a discrete latent's q(y|x) agrees with labels.

Active units (Burda et al., 2016) are the latent dimensions d with Cov_x(E_q[z_d|x]) > 0.01;
see :class:`~pyro_vae.infer.evaluate.PosteriorMoments` for how E_q[z|x] is taken.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix, normalized_mutual_info_score
from torch import Tensor

from .evaluate import PerExample

ACTIVE_THRESHOLD = 0.01


def posterior_mean_covariance(posterior_mean: Tensor, mc_variance: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(Cov_x(E_q[z_d|x]) per dimension d, the Monte Carlo part removed from it), both (latent,).

    The variance over examples of Monte Carlo means exceeds that of the exact means by
    the average Monte Carlo variance of a mean; that average is subtracted (and
    returned, as the Monte Carlo error that was removed)."""
    mc = torch.zeros(posterior_mean.shape[-1], dtype=torch.float64, device=posterior_mean.device)
    if len(posterior_mean) < 2:
        return torch.zeros_like(mc), mc
    if mc_variance is not None:
        mc = mc_variance.double().mean(0)
    return posterior_mean.double().var(0) - mc, mc


def active_units(posterior_mean: Tensor, mc_variance: Optional[Tensor] = None, threshold: float = ACTIVE_THRESHOLD) -> int:
    """The number of dimensions with Cov_x(E_q[z_d|x]) > threshold (Burda et al., 2016)."""
    covariance, _ = posterior_mean_covariance(posterior_mean, mc_variance)
    return int((covariance > threshold).sum().item())


def active_unit_summary(posterior_mean: Tensor, mc_variance: Optional[Tensor] = None,
                        layer_dims: Optional[Sequence[int]] = None) -> dict:
    """``active_units``, ``posterior_mean_variance`` (Cov_x(E_q[z_d|x]) per dimension) and
    ``posterior_mean_mc_variance`` (the Monte Carlo part removed from it), as evaluate and
    analyze report them; all None when they cannot be estimated (a posterior without a
    closed-form mean and fewer than 2 draws). With stacked layers (``layer_dims``, the
    sizes of z_1 ... z_L in the latent vector), also ``active_units_per_layer``."""
    covariance, mc = posterior_mean_covariance(posterior_mean, mc_variance)
    latent_dim = posterior_mean.shape[-1]
    layer_dims = list(layer_dims or [latent_dim])
    if not torch.isfinite(mc).all():
        return {"active_units": None, "latent_dim": latent_dim, "layer_dims": layer_dims, "active_units_per_layer": None,
                "posterior_mean_variance": None, "posterior_mean_mc_variance": None}
    active = covariance > ACTIVE_THRESHOLD
    return {
        "active_units": int(active.sum().item()),
        "latent_dim": latent_dim,
        "layer_dims": layer_dims,
        "active_units_per_layer": [int(part.sum().item()) for part in torch.split(active, layer_dims)],
        "posterior_mean_variance": covariance.tolist(),
        "posterior_mean_mc_variance": mc.tolist(),
    }


def standard_error(values: Tensor | np.ndarray) -> float:
    """The standard error of the mean, std(ddof=1) / sqrt(n) (``scipy.stats.sem``), in float64;
    NaN with fewer than 2 values."""
    values = torch.as_tensor(values, dtype=torch.float64).cpu().numpy()
    return float(stats.sem(values)) if len(values) > 1 else math.nan


def summarize(result: PerExample, num_samples: int, layer_dims: Optional[Sequence[int]] = None) -> dict:
    """The dataset-level figures of an evaluation (nats per example). ``posterior_mean_variance``
    is Cov_x(E_q[z_d|x]) per dimension, which active units threshold at 0.01, and
    ``posterior_mean_mc_variance`` the Monte Carlo part removed from it (0 for exact means)."""
    summary = {
        "log_likelihood": result.log_likelihood.double().mean().item(),
        "log_likelihood_se": standard_error(result.log_likelihood),
        "elbo": result.elbo.double().mean().item(),
        "elbo_se": standard_error(result.elbo),
        "reconstruction": result.reconstruction.double().mean().item(),
        "kl": result.kl.double().mean().item(),
        **active_unit_summary(result.posterior_mean, result.posterior_mean_mc_variance, layer_dims),
        "kl_per_dim": None if result.kl_per_dim is None else result.kl_per_dim.double().mean(0).tolist(),
        "samples": num_samples,
        "n": len(result.log_likelihood),
    }
    return summary


def classification_summary(class_probs: Tensor, labels: Tensor) -> dict:
    """How q(y|x) agrees with labels: the accuracy of argmax q(y|x) read as the label
    (``accuracy``), the accuracy under the best one-to-one matching of clusters to labels
    (``cluster_accuracy``; Hungarian algorithm, scipy), and normalized mutual information
    (``nmi``; scikit-learn), and ``confusion``, counts[predicted y, label] (classes x labels)."""
    predicted = class_probs.argmax(-1).cpu().numpy()
    truth = labels.cpu().numpy().astype(np.int64)
    size = max(int(predicted.max()), int(truth.max()), class_probs.shape[-1] - 1) + 1
    counts = confusion_matrix(truth, predicted, labels=np.arange(size)).T  # sklearn's rows are the labels
    clusters, classes = linear_sum_assignment(counts, maximize=True)
    return {
        "accuracy": float((predicted == truth).mean()),
        "cluster_accuracy": float(counts[clusters, classes].sum() / len(truth)),
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "confusion": counts[: class_probs.shape[-1], : int(truth.max()) + 1].tolist(),
    }
