"""What changes with the position in training, as pure functions of it: the KL weight beta
(a linear warm-up) and a relaxed discrete latent's temperature (a geometric anneal).

The position is counted in steps or in epochs (a fraction: ``step / steps_per_epoch``); the
functions read nothing else, so a resumed run, which restores the step counter, continues
both schedules exactly (the model is scvi-tools' ``_compute_kl_weight``)."""

from __future__ import annotations


def kl_weight(step: int, steps_per_epoch: int, warmup_epochs: float, beta: float) -> float:
    """beta at training step ``step`` (counted from 0), ramped linearly over the first
    ``warmup_epochs`` epochs (Bowman et al., 2016):

        beta(step) = beta * min(1, (step + 1) / (warmup_epochs * steps_per_epoch)),

    so the first step's weight is beta / W (W the warm-up steps) and step W - 1 on take beta;
    without a warm-up (``warmup_epochs * steps_per_epoch <= 0``), beta throughout."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)


def temperature(epochs: float, initial: float, final: float, anneal_epochs: float) -> float:
    """tau after ``epochs`` (a fraction) of training, annealed geometrically from ``initial``
    to ``final`` over ``anneal_epochs`` epochs:

        tau(t) = max(final, initial * (final / initial)^(t / anneal_epochs)),

    ``final`` throughout without an anneal (``anneal_epochs <= 0``) or where ``final >= initial``."""
    if anneal_epochs <= 0 or final >= initial:
        return final
    ratio = final / initial
    return max(final, initial * ratio ** (epochs / anneal_epochs))
