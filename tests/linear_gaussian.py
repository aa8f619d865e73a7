"""A linear-Gaussian VAE whose log p(x) and posterior are known in closed form.

p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I),
p(z|x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1. W has orthogonal columns,
so S is diagonal and the library's diagonal normal posterior can represent it exactly.
"""

import math

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
