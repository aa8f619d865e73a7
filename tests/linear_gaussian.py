"""A linear-Gaussian VAE whose log p(x) and posterior are known in closed form.

p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I),
p(z|x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1. W has orthogonal columns,
so S is diagonal and the library's diagonal normal posterior can represent it exactly.
"""

import math

import numpy as np

import pyro
import torch
from pyro import poutine
from scipy import stats

from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

LINEAR = {"kind": "mlp", "hidden": []}


def softplus_inverse(y):
    return y + math.log(-math.expm1(-y))


def make(D=4, L=2, s=0.5, N=64, exact_posterior=False, seed=0, num_data=None, proposal="mild"):
    """(vae, x, exact log p(x) per example as a float64 numpy array).

    The encoder gives the exact posterior (``exact_posterior``), or a proposal off it:
    ``mild`` (shifted and somewhat wider) or ``narrow`` (scales a tenth of the posterior's).
    """
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    W = q[:, :L] * torch.tensor([1.5, 0.8, 1.2, 0.6][:L], dtype=torch.float64)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    z = torch.randn(N, L, generator=gen, dtype=torch.float64)
    x = z @ W.T + b + s * torch.randn(N, D, generator=gen, dtype=torch.float64)
    exact = stats.multivariate_normal(b.numpy(), (W @ W.T + s**2 * torch.eye(D, dtype=torch.float64)).numpy()).logpdf(x.numpy())
    spec = Spec.from_dict({"model": {
        "latent_dim": L,
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": s, "min_scale": 0.0},
        "encoder": LINEAR, "decoder": LINEAR,
    }}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,), num_data).double()
    S = 1.0 / (1.0 + (W**2).sum(0) / s**2)  # diagonal of the posterior covariance
    A = S[:, None] * W.T / s**2
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
        enc = vae.encoder.net[0]
        enc.weight.zero_()
        enc.weight[:L] = A
        enc.bias[:L] = -A @ b
        enc.bias[L:] = torch.tensor([softplus_inverse(v - 1e-4) for v in S.sqrt().tolist()], dtype=torch.float64)
        if not exact_posterior and proposal == "mild":
            enc.weight[:L] += 0.1 * torch.randn(L, D, generator=gen, dtype=torch.float64)
            enc.bias[L:] = torch.tensor([softplus_inverse(1.3 * v) for v in S.sqrt().tolist()], dtype=torch.float64)
        elif not exact_posterior:
            enc.bias[L:] = torch.tensor([softplus_inverse(0.1 * v) for v in S.sqrt().tolist()], dtype=torch.float64)
    return vae, x, exact


def importance_terms(vae, x, num_samples):
    """(log p(x|z_s), log p(z_s), log q(z_s|x)) at num_samples draws z_s ~ q(z|x), each
    (num_samples, n), from the VAE's own distributions."""
    q = vae.q(x)
    z = q.rsample((num_samples,))
    return vae.p_x(z, x).log_prob(x), vae.latent_prior().log_prob(z), q.log_prob(z)


def exact_posterior(vae, x):
    """(mean, std) of p(z|x) for the model in ``vae`` (read from its decoder)."""
    W, b = vae.decoder.net[0].weight, vae.decoder.net[0].bias
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale)
    S = 1.0 / (1.0 + (W**2).sum(0) / s**2)
    return ((x - b) @ W) * S / s**2, S.sqrt().expand(len(x), -1)


def replayed(vae, z, x, index, k):
    """The guide with z fixed to ``z`` (K, B, L), under the estimator's particle plate."""
    def guide_in_plate(*args):
        if k == 1:
            return vae.guide(*args)
        with pyro.plate("num_particles_vectorized", k, dim=-2):
            return vae.guide(*args)

    trace = poutine.trace(guide_in_plate).get_trace(x, index)
    trace.nodes["z"]["value"] = z if k > 1 else z[0]
    return poutine.replay(vae.guide, trace=trace)


# --- two layers -------------------------------------------------------------------------
#
# p(z2) = N(0, 1), p(z1|z2) = N(a z2 + c, sd^2), p(x|z1) = N(w z1 + b, s^2 I): (z2, z1, x) is
# jointly Gaussian, so log p(x) and every conditional of the posterior are closed forms, and
# each of the three guides can be set to the exact posterior with linear networks (one-
# dimensional layers make a diagonal posterior exact): top_down q(z2|x) q(z1|x, z2),
# bottom_up q(z1|x) q(z2|z1) = p(z2|z1), ladder N(mu^(x), s^) merged with p(z1|z2).


def _condition(mean, cov, target, given):
    """(coefficients, intercept, variance) of the Gaussian conditional of index ``target`` given ``given``."""
    cross = cov[np.ix_([target], given)]
    coef = np.linalg.solve(cov[np.ix_(given, given)], cross.T).T[0]
    return coef, mean[target] - coef @ mean[given], cov[target, target] - (cross @ np.linalg.solve(cov[np.ix_(given, given)], cross.T))[0, 0]


def make_two_layer(guide: str, D=3, N=16, seed=0, exact=True):
    """(vae, x, exact log p(x)) for the two-layer model above, the guide at the exact
    posterior (``exact``) or off it (shifted means, scales 1.3x)."""
    import numpy as np  # noqa: F811 (module scope in callers)

    layer = {"latent_dim": 1, "encoder": LINEAR, "prior_network": LINEAR}
    spec = Spec.from_dict({"model": {
        "latent_dim": 1, "upper_layers": [layer], "inference_network": guide,
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5, "min_scale": 0.0},
        "encoder": LINEAR, "decoder": LINEAR,
    }}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,)).double()
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale).item()  # 0.5 as the model holds it (float32-rounded)
    rng = np.random.default_rng(seed)
    a, c, sd = 1.2, 0.3, 0.7
    w, b = rng.normal(0, 1, D), rng.normal(0, 1, D)
    # the joint of (z2, z1, x): z1 = a z2 + c + sd e1, x = w z1 + b + s e
    mean = np.concatenate([[0.0, c], w * c + b])
    A = np.zeros((2 + D, 2 + D))  # (z2, z1, x) = A (e2, e1, e) + mean
    A[0, 0] = 1
    A[1, 0], A[1, 1] = a, sd
    A[2:, 0], A[2:, 1], A[2:, 2:] = w * a, w * sd, s * np.eye(D)
    cov = A @ A.T
    x = mean[2:] + rng.multivariate_normal(np.zeros(D), cov[2:, 2:], size=N)
    exact_logpx = stats.multivariate_normal(mean[2:], cov[2:, 2:]).logpdf(x)
    xs = list(range(2, 2 + D))
    off = 0.0 if exact else 0.15
    widen = 1.0 if exact else 1.3

    def set_linear(net, coef, intercept, sdev):
        weight = net.net[0].weight
        weight.zero_()
        weight[0] = torch.as_tensor(coef) + off
        net.net[0].bias.copy_(torch.tensor([intercept + off, softplus_inverse(widen * sdev - 1e-4)], dtype=torch.float64))

    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(torch.as_tensor(w).reshape(D, 1))
        vae.decoder.net[0].bias.copy_(torch.as_tensor(b))
        down = vae.upper[0].down.network.net[0]  # p(z1 | z2)
        down.weight.copy_(torch.tensor([[a], [0.0]], dtype=torch.float64))
        down.bias.copy_(torch.tensor([c, softplus_inverse(sd - 1e-4)], dtype=torch.float64))
        if guide == "top_down":  # top: q(z2|x); bottom: q(z1 | x, z2)
            coef, icpt, var = _condition(mean, cov, 0, xs)
            set_linear(vae.upper[0].encoder, coef, icpt, math.sqrt(var))
            coef, icpt, var = _condition(mean, cov, 1, xs + [0])
            set_linear(vae.encoder, coef, icpt, math.sqrt(var))
        elif guide == "bottom_up":  # q(z1|x), then q(z2|z1)
            coef, icpt, var = _condition(mean, cov, 1, xs)
            set_linear(vae.encoder, coef, icpt, math.sqrt(var))
            coef, icpt, var = _condition(mean, cov, 0, [1])
            set_linear(vae.upper[0].encoder, coef, icpt, math.sqrt(var))
        else:  # ladder: p(x|z1) as a density of z1 is N(w.(x-b)/|w|^2, s^2/|w|^2)
            ww = w @ w
            set_linear(vae.encoder, w / ww, -(w @ b) / ww, s / math.sqrt(ww))
            den = ww * (a**2 + sd**2) + s**2  # q(z2|x) from the upward output mu^ = w.(x - b)/|w|^2
            coef, icpt, var = _condition(mean, cov, 0, xs)
            upper = vae.upper[0].encoder.net[0]
            upper.weight.zero_()
            upper.weight[0, 0] = a * ww / den + off
            upper.bias.copy_(torch.tensor([-a * ww * c / den + off, softplus_inverse(widen * math.sqrt(var) - 1e-4)],
                                          dtype=torch.float64))
    return vae, torch.as_tensor(x), exact_logpx
