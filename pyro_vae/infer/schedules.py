"""What changes with the position in training, as pure functions of it: the KL weight beta
(a linear warm-up), a relaxed discrete latent's temperature (a geometric anneal) and the
learning rate's factor (``inference.lr_schedule``, one registry slot).

The position is counted in steps or in epochs (a fraction: ``step / steps_per_epoch``); the
functions read nothing else, so a resumed run, which restores the step counter, continues
both schedules exactly (the model is scvi-tools' ``_compute_kl_weight``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..params import count
from ..registry import Registry


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


# --- the learning rate --------------------------------------------------------------------

LR_SCHEDULES = Registry("lr_schedule")
Factor = Annotated[float, Field(gt=0, le=1)]


@LR_SCHEDULES.protocol
class LearningRateSchedule:
    """``inference.lr_schedule``: the factor f(e) by which the optimizer's learning rate is
    multiplied after ``e`` completed epochs, lr(e) = inference.optimizer.lr * f(e), f(0) = 1.

    A pure function of the epoch counter, as beta's warm-up is of the step counter: a resumed
    run continues the schedule exactly, with no scheduler state in the checkpoint. The rate
    changes at epoch boundaries only. The closed forms are those of torch's ``StepLR`` and
    ``ExponentialLR`` (stepped once an epoch), and Burda et al.'s stages."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError


@LR_SCHEDULES.register("constant")
class ConstantRate(LearningRateSchedule):
    """The optimizer's learning rate throughout: f(e) = 1."""

    def __call__(self, epoch: int) -> float:
        return 1.0


@LR_SCHEDULES.register("step")
class StepDecay(LearningRateSchedule):
    """f(e) = factor^floor(e / every) (torch's StepLR). VaDE: lr 2e-3 times 0.9 every 10
    epochs (Jiang et al., 2017)."""

    def __init__(self, *, every: count(1_000_000) = 10, factor: Factor = 0.9):
        self.every, self.factor = every, factor

    def __call__(self, epoch: int) -> float:
        return self.factor ** (epoch // self.every)


@LR_SCHEDULES.register("exponential")
class ExponentialDecay(LearningRateSchedule):
    """f(e) = factor^e (torch's ExponentialLR, gamma = factor)."""

    def __init__(self, *, factor: Factor = 0.99):
        self.factor = factor

    def __call__(self, epoch: int) -> float:
        return self.factor ** epoch


@LR_SCHEDULES.register("stages")
class GeometricStages(LearningRateSchedule):
    """Stages of geometrically growing length, the rate falling by ``factor`` from one to the
    next: stage i (i = 0, 1, ...) lasts growth^i epochs at f = factor^i, so epoch e is in
    stage i where (growth^i - 1) / (growth - 1) <= e < (growth^(i+1) - 1) / (growth - 1)
    (growth = 1: epoch i).
    The defaults are Burda et al.'s (2016): 3^i epochs at 1e-3 * 10^(-i/7) for
    i = 0..7, 3280 epochs in all; after ``stages`` stages the last rate stays."""

    def __init__(self, *, growth: count(1_000) = 3, factor: Factor = 10 ** (-1 / 7),
                 stages: count(1_000) = 8):
        self.growth, self.factor, self.stages = growth, factor, stages

    def stage(self, epoch: int) -> int:
        i, length, start = 0, 1, 0
        while i < self.stages - 1 and epoch >= start + length:
            start, length, i = start + length, length * self.growth, i + 1
        return i

    def __call__(self, epoch: int) -> float:
        return self.factor ** self.stage(epoch)
