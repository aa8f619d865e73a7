"""Optimizers, and the one-optimizer adapter that SVI steps.

``pyro.optim.Adam`` keeps one torch optimizer per parameter tensor and ``SVI`` hands
it the parameters it saw in the trace. :class:`SingleOptimizer` is a
``pyro.optim.PyroOptim`` over one torch optimizer for all of a module's parameters,
in their fixed order: one multi-tensor step per SVI step, a ``state_dict`` that
resumes exactly, optional gradient-norm clipping, and gradients released after the
step instead of zero-filled.
"""

from __future__ import annotations

from typing import Annotated, Callable, Optional

import torch
from pydantic import Field
from pyro.optim import PyroOptim

from ..errors import SpecError, TrainingDiverged
from ..registry import Registry
from .pyro_internals import in_param_store

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.protocol(torch.optim.Optimizer)
LearningRate = Annotated[float, Field(gt=0, le=10)]
Decay = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]


def _fast_path(params) -> dict:
    """One fused kernel for all parameters (CPU and CUDA) where torch has one, rather than
    one optimizer step per tensor (what it saves: BENCHMARKS.md, "Training throughput")."""
    devices = {p.device.type for p in params}
    return {"fused": True} if devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params) else {}


Epsilon = Annotated[float, Field(gt=0, le=1)]


@OPTIMIZERS.register("adam")
def adam(params, *, lr: LearningRate = 1e-3, beta1: Beta = 0.9, beta2: Beta = 0.999, weight_decay: Decay = 0.0,
         eps: Epsilon = 1e-8):
    """Adam (Kingma & Ba, 2015)."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, eps=eps,
                            **_fast_path(params))


class AdamNormGrad(torch.optim.Adam):
    """Adam on each parameter tensor's gradient scaled to unit L2 norm, g / (||g||_2 + 1e-7),
    at every step: the optimizer of Tomczak & Welling's VampPrior code (``AdamNormGrad`` in
    jmtomczak/vae_vampprior, utils/optimizer.py), with which their table 2 was trained. (Their
    code adds eps to the root of the uncorrected second moment, torch's Adam to the corrected
    one: the same step as eps -> 0.) Each tensor's step no longer depends on its gradient's
    size, so ``inference.schedule.clip_norm``, one factor for all gradients, has no effect but
    its check that they are finite."""

    def step(self, closure=None):
        loss = None
        if closure is not None:  # as the paper's code: the gradients the closure computes are normalized
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(torch.linalg.vector_norm(p.grad) + 1e-7)
        super().step()
        return loss


@OPTIMIZERS.register("adam_normgrad")
def adam_normgrad(params, *, lr: LearningRate = 1e-3, beta1: Beta = 0.9, beta2: Beta = 0.999, eps: Epsilon = 1e-8):
    """Adam on gradients scaled to unit norm per tensor (Tomczak & Welling's code, 2018)."""
    params = list(params)
    return AdamNormGrad(params, lr=lr, betas=(beta1, beta2), eps=eps, **_fast_path(params))


@OPTIMIZERS.register("adamw")
def adamw(params, *, lr: LearningRate = 1e-3, beta1: Beta = 0.9, beta2: Beta = 0.999, weight_decay: Decay = 0.01):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, **_fast_path(params))


@OPTIMIZERS.register("sgd")
def sgd(params, *, lr: LearningRate = 1e-2, momentum: Beta = 0.9, nesterov: bool = False):
    """Stochastic gradient descent with (Nesterov) momentum."""
    if nesterov and momentum == 0:
        raise SpecError("nesterov = true needs momentum > 0")
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, nesterov=nesterov)


def _replaced(p) -> bool:
    """Whether ``p`` has left Pyro's param store since the step read it: TraceGraph_ELBO
    replaces its decaying-average baselines every step; they are state, not parameters to
    optimize."""
    return not in_param_store(p)


class SingleOptimizer(PyroOptim):
    """A ``PyroOptim`` that steps one torch optimizer over a fixed parameter list."""

    def __init__(self, optimizer: torch.optim.Optimizer, clip_norm: float = 0.0,
                 reduce_gradients: Optional[Callable[[list], None]] = None):
        # PyroOptim.__init__ is not called: none of its per-parameter machinery is used
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._known = frozenset(map(id, self.params))
        self.clip_norm = clip_norm
        # under several processes: the all-reduce of the gradients, before clipping and the step
        # (as pyro.optim.HorovodOptimizer does), so every rank takes the same step
        self.reduce_gradients = reduce_gradients

    def __call__(self, params, *args, **kwargs) -> None:
        for p in params:
            if id(p) not in self._known and not _replaced(p):
                raise SpecError(
                    "SVI saw a parameter that is not the VAE's: one registered with pyro.param outside "
                    "its modules (make it an nn.Parameter of a component), or another VAE's left in "
                    "Pyro's param store under the same names (pyro.clear_param_store() before training)"
                )
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.params)
        if self.clip_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
            if not torch.isfinite(norm):
                raise TrainingDiverged(f"gradient norm is {norm.item()}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_state(self) -> dict:
        return self.optimizer.state_dict()

    def set_state(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)
