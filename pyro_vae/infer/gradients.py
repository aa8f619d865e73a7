"""Gradient signal-to-noise of ELBO estimators (Rainforth et al., 2018): per parameter
group (encoder, decoder, and q(y|x)'s classifier with a discrete latent),
SNR = mean over parameters of |E[g]| / std[g] and the mean gradient variance, from
repeated estimates on one fixed batch; a probe that takes them during training; and
SNR against K at fixed weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .estimators import ESTIMATORS, applied_to
from .pyro_internals import baselines, set_baselines

@dataclass
class GradientStats:
    snr: float
    variance: float


def gradient_snr(vae, estimator, x, index, repeats: int, beta: float = 1.0) -> dict[str, GradientStats]:
    """SNR and variance of the encoder's and the decoder's gradients over ``repeats``
    estimates on the batch (x, index), per example (the loss is divided by N).

    Every probe is taken alike: in training mode (as the gradients that train the model
    are) and at KL weight ``beta`` (the schedule's target, not the warm-up's current
    value). Random-number states, the mode, the VAE's beta and TraceGraph_ELBO's
    decaying-average baselines (in Pyro's param store, which every estimate moves) are
    restored afterwards, so training continues unchanged."""
    kept_baselines = baselines()
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if x.is_cuda else None
    was_training, previous_beta = vae.training, vae.beta
    vae.train()
    vae.beta = beta
    groups = vae.parameter_groups()
    stats: dict[str, list] = {}
    scale = 1.0 / (vae.num_data or len(x))
    for _ in range(repeats):
        for p in vae.parameters():
            p.grad = None
        applied_to(estimator, vae).loss_and_grads(vae.model, vae.guide, x, index)  # as training does
        for name, params in groups.items():
            if not params:
                continue
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).double() * scale
            count, mean, m2 = stats.get(name, (0, torch.zeros_like(g), torch.zeros_like(g)))
            count += 1
            delta = g - mean
            mean = mean + delta / count
            m2 = m2 + delta * (g - mean)  # Welford: memory O(parameters), not O(repeats x parameters)
            stats[name] = (count, mean, m2)
    for p in vae.parameters():
        p.grad = None
    vae.train(was_training)
    vae.beta = previous_beta
    set_baselines(kept_baselines, remove_others=True)  # those the probe created (before the first step) go: training starts its own
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    result = {}
    for name, (count, mean, m2) in stats.items():
        var = m2 / max(count - 1, 1)
        std = var.sqrt()
        moving = std > 0
        snr = (mean.abs()[moving] / std[moving]).mean().item() if moving.any() else math.inf
        result[name] = GradientStats(snr=snr, variance=var.mean().item())
    return result


class SNRProbe:
    """Measures gradient SNR on one fixed batch before training, half way and at the end."""

    def __init__(self, repeats: int, batch_size: int):
        self.repeats, self.batch_size = repeats, batch_size
        self.points: list[dict] = []

    def measure(self, trainer) -> None:
        x, index = fixed_batch(trainer.data, self.batch_size)
        stats = gradient_snr(trainer.vae, trainer.estimator, x, index, self.repeats, trainer.schedule.beta)
        self.points.append({"epoch": trainer.state.epoch, **{f"snr_{k}": v.snr for k, v in stats.items()},
                            **{f"grad_var_{k}": v.variance for k, v in stats.items()}})

    def on_epoch(self, trainer) -> None:
        epochs = trainer.schedule.epochs
        if trainer.state.epoch in (math.ceil(epochs / 2), epochs) or trainer.state.stopped_early:
            self.measure(trainer)


def fixed_batch(data, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch_size`` training examples (binarized with a fixed seed when dynamic):
    the one batch every gradient estimate of a comparison is taken on."""
    train = data.split("train")
    index = torch.arange(min(batch_size, len(train)), device=train.device)
    return data.batch(index, torch.Generator(device=train.device).manual_seed(0)), index


def snr_against_k(vae, data, estimators: Sequence[tuple[str, dict]], ks: Sequence[int], repeats: int,
                  batch_size: int, beta: float = 1.0) -> list[dict]:
    """SNR of each K-sample estimator at K in ``ks``, all at the same weights.

    ``estimators`` are (label, resolved estimator table) pairs: only K is replaced, so
    every other setting (renyi's alpha, ...) is kept, and rows carry the full label."""
    x, index = fixed_batch(data, batch_size)
    rows = []
    for label, table in estimators:
        for k in ks:
            stats = gradient_snr(vae, ESTIMATORS.build({**table, "k": k}), x, index, repeats, beta)
            rows.append({"estimator": label, "k": k, **{f"snr_{g}": s.snr for g, s in stats.items()}})
    return rows
