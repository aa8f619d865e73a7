"""A semi-amortized proposal: the encoder's q(z|x) refined for each example by gradient steps
on that example's own ELBO, the model held fixed (Kim et al., 2018).

The encoder's q(z|x_n) = N(mu(x_n), diag sigma(x_n)^2) is amortized: one network serves every
x, so for a given x_n it is not the best diagonal Gaussian. The difference between the best
one's ELBO and the encoder's is the amortization gap (Cremer et al., 2018). Refining closes it:
starting at (m, log s) = (mu(x_n), log sigma(x_n)), ``steps`` Adam steps ascend

    L_n(m, s) = E_{eps ~ N(0, I)} [log p(x_n | z) + log p(z)] + H[N(m, diag s^2)],   z = m + s * eps,

the expectation by ``particles`` reparameterized draws, the entropy H in closed form; the
learning rate falls from ``lr`` to 0 on a cosine over the steps, so that the last steps settle
at the optimum rather than wander around it by the gradient noise. Adam
acts elementwise, so one optimizer over all examples' (m, log s), the loss summed over the
examples, takes each example's own steps: every example is refined at once, in one batch.

As an importance proposal the refined q_n stays valid: it is fixed before the importance
draws and a Gaussian covers the posterior, so w = p(x_n, z) / q_n(z), z ~ q_n, is still an
unbiased estimate of p(x_n) (and log 1/S sum_s w_s a lower bound in expectation). Closer to
p(z|x_n) in KL(q || p), its weights have lighter tails: a lower variance and Pareto k-hat.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal
from torch import Tensor

from ..errors import RunError

LR = 3e-2  # Adam's learning rate on (m, log s)
PARTICLES = 16  # reparameterized draws per example and step


def gaussian_start(q) -> tuple[Tensor, Tensor]:
    """(mean, sd) of the encoder's q(z|x) to start from; a posterior without them in closed
    form (a flow, a mixture over a discrete y) cannot be refined."""
    try:
        return q.mean.detach(), q.stddev.detach()
    except NotImplementedError:
        raise RunError(
            "$refine needs a posterior q(z|x) with a closed-form mean and sd (a diagonal or low-rank normal), "
            f"not {type(q).__name__}; evaluate this run without $refine"
        ) from None


def refine_gaussian(vae, x: Tensor, q, prior, steps: int, lr: float = LR, particles: int = PARTICLES) -> Normal:
    """The diagonal normal N(m_n, diag s_n^2) per example of ``x``, started at ``q`` (the
    encoder's q(z|x)) and refined by ``steps`` Adam steps on each example's ELBO under the
    prior ``prior`` and ``vae``'s decoder (their parameters are not changed, nor their
    gradients): event shape (latent,), batch shape (n,)."""
    mean, sd = gaussian_start(q)
    loc = mean.clone().requires_grad_()
    log_scale = sd.clamp_min(torch.finfo(sd.dtype).tiny).log().clone().requires_grad_()
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            proposal = Normal(loc, log_scale.exp()).to_event(1)
            z = proposal.rsample((particles,))
            log_joint = vae.p_x(z, x).log_prob(x) + prior.log_prob(z)
            loss = -(log_joint.mean(0) + proposal.entropy()).sum()
            loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
            optimizer.step()
    return Normal(loc.detach(), log_scale.detach().exp()).to_event(1)
