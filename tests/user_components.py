"""Components written the way a user writes their own, plugged in by import path
(``kind = "user_components:AffineFlowPosterior"``): the catalogue-wide property tests run
them beside the registered kinds."""

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_vae.infer.schedules import LearningRateSchedule
from pyro_vae.model.networks import MLP
from pyro_vae.model.posteriors import Posterior


class _LearnedAffine(dist.torch_transform.TransformModule):
    """y = a * z + b with learned a > 0 and b, read from the module at every call (not
    when the distribution is built): a parameter that only ``log_prob`` touches."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, dim: int):
        super().__init__(cache_size=1)
        self.log_a = nn.Parameter(torch.zeros(dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def _call(self, z):
        return self.log_a.exp() * z + self.b

    def _inverse(self, y):
        return (y - self.b) * (-self.log_a).exp()

    def log_abs_det_jacobian(self, z, y):
        return self.log_a.expand(z.shape).sum(-1)


class AffineFlowPosterior(Posterior):
    """A diagonal normal followed by one learned global affine map (a user's flow)."""

    def __init__(self, latent_dim, *, spread: float = 1.0):
        super().__init__(latent_dim)
        self.encoder_outputs = 2 * latent_dim
        self.flow = _LearnedAffine(latent_dim)
        with torch.no_grad():
            self.flow.log_a.fill_(torch.tensor(spread).log())

    def forward(self, h):
        loc, scale = self.loc_scale(h)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [self.flow])


class StandardNormalPosterior(Posterior):
    """q(z|x) = N(0, I) for every x, as a transformed distribution (no closed-form mean):
    a posterior with no active unit, whose means can only be estimated from draws."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.encoder_outputs = 2 * latent_dim

    def forward(self, h):
        zero = 0.0 * h[..., : self.latent_dim]  # keeps the encoder in the graph
        base = dist.Normal(zero, torch.ones_like(zero)).to_event(1)
        return dist.TransformedDistribution(base, [dist.transforms.AffineTransform(0.0, 1.0, event_dim=1)])


class PointPosterior(Posterior):
    """q(z|x) = delta(mu(x)): no randomness at all, for checks that need identical draws
    whatever process computes them (the distributed gradient-equivalence test)."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.encoder_outputs = latent_dim

    def forward(self, h):
        return dist.Delta(h, event_dim=1)


class NegativeAfterOneEpoch(LearningRateSchedule):
    """A learning-rate schedule with a bug: a negative factor from the second epoch on."""

    def __call__(self, epoch):
        return -1.0 if epoch >= 1 else 1.0


class SignSGD(torch.optim.Optimizer):
    """An optimizer without a learning rate 'lr': steps of fixed size against the gradient's sign."""

    def __init__(self, params, *, step_size: float = 1e-3):
        super().__init__(params, {"step_size": step_size})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["step_size"])


class DoubledInputMLP(MLP):
    """A user's mlp that reads 2 x where the library's reads x: its own forward, which the
    library must call (M2's q(z|x, y) then reads it on [x, y] concatenated)."""

    def forward(self, x):
        return super().forward(2 * x)
