"""The VAE's Pyro model and guide: trace shapes, the ELBO against closed forms, scaling."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from linear_gaussian import importance_terms
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

LINEAR = {"kind": "mlp", "hidden": []}


def linear_gaussian_vae(D=3, L=2, s=0.7, num_data=None):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), q(z|x) = N(Ax + c, diag softplus(Ex + f)^2)."""
    spec = Spec.from_dict({
        "model": {
            "latent_dim": L,
            "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": s, "min_scale": 0.0},
            "encoder": LINEAR,
            "decoder": LINEAR,
        }
    }).model
    torch.manual_seed(1)
    return build_vae(spec, (D,), num_data)


def parts(vae, x):
    """Hand-read parameters of the linear-Gaussian VAE, independent of the library's code."""
    L = vae.latent_dim
    enc, dec = vae.encoder.net[0], vae.decoder.net[0]
    h = x @ enc.weight.T + enc.bias
    mu, sigma = h[:, :L], torch.nn.functional.softplus(h[:, L:]) + 1e-4
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale)
    return mu, sigma, dec.weight, dec.bias, s


def test_trace_shapes():
    vae = linear_gaussian_vae(D=5, L=3, num_data=100)
    x, index = torch.randn(8, 5), torch.arange(8)
    guide = poutine.trace(vae.guide).get_trace(x, index)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, index)
    z = guide.nodes["z"]
    assert z["value"].shape == (8, 3)
    assert z["fn"].batch_shape == (8,) and z["fn"].event_shape == (3,)
    assert model.nodes["z"]["fn"].batch_shape == (8,) and model.nodes["z"]["fn"].event_shape == (3,)
    assert model.nodes["x"]["fn"].event_shape == (5,) and model.nodes["x"]["is_observed"]
    assert [f.name for f in model.nodes["x"]["cond_indep_stack"]] == ["data"]
    frame = model.nodes["x"]["cond_indep_stack"][0]
    assert (frame.size, frame.full_size) == (8, 100)
    # vectorized particles add a leading dimension everywhere
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    vtrace = poutine.trace(elbo._vectorized_num_particles(vae.guide)).get_trace(x, index)
    assert vtrace.nodes["z"]["value"].shape == (4, 8, 3)


def test_image_shaped_data_and_networks():
    spec = Spec.from_dict({"model": {"latent_dim": 4, "encoder": {"kind": "conv", "channels": [4, 8]},
                                     "decoder": {"kind": "conv", "channels": [4, 8]}}}).model
    vae = build_vae(spec, (1, 12, 10), 50)
    x = torch.rand(6, 1, 12, 10)
    assert vae.q(x).batch_shape == (6,)
    z = vae.q(x).rsample((3,))
    assert vae.p_x(z).batch_shape == (3, 6) and vae.p_x(z).event_shape == (1, 12, 10)
    assert vae.p_x(z).log_prob(x).shape == (3, 6)


def fixed_z(vae, z, *args):
    """The guide with its draw of z replaced by ``z`` (still a latent site)."""
    trace = poutine.trace(vae.guide).get_trace(*args)
    trace.nodes["z"]["value"] = z
    return poutine.replay(vae.guide, trace=trace)


def test_elbo_at_one_point_matches_hand_computation():
    """Trace_ELBO with z fixed is log p(x|z) + beta (log p(z) - log q(z|x)), times N/B."""
    N, B = 60, 4
    vae = linear_gaussian_vae(num_data=N)
    vae.beta = 0.3
    x, index, z0 = torch.randn(B, 3), torch.arange(B), torch.randn(B, 2)
    guide = fixed_z(vae, z0, x, index)
    loss = Trace_ELBO(max_plate_nesting=1).loss(vae.model, guide, x, index)
    mu, sigma, W, b, s = parts(vae, x)

    def log_normal(v, m, sd):
        return (-0.5 * ((v - m) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)

    with torch.no_grad():
        per_example = log_normal(x, z0 @ W.T + b, s) + 0.3 * (log_normal(z0, 0.0, torch.tensor(1.0)) - log_normal(z0, mu, sigma))
    assert loss == pytest.approx(-(N / B) * per_example.sum().item(), rel=1e-5)


def test_monte_carlo_elbo_matches_closed_form():
    """E_q[log N(x; Wz + b, s^2)] - KL(N(mu, sigma^2) || N(0, I)) in closed form."""
    vae = linear_gaussian_vae(num_data=None)
    x = torch.randn(5, 3)
    mu, sigma, W, b, s = parts(vae, x)
    with torch.no_grad():
        D = x.shape[1]
        resid = x - (mu @ W.T + b)
        trace = (sigma**2) @ (W**2).T  # diag(W Sigma W^T) per example
        rec = -0.5 * D * math.log(2 * math.pi) - D * torch.log(s) - ((resid**2 + trace).sum(-1)) / (2 * s**2)
        kl = 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum(-1)
        exact = (rec - kl).sum().item()
    K = 20000
    with torch.no_grad():  # the Monte Carlo standard error of a K-sample estimate of the summed ELBO
        log_px_z, log_pz, log_qz = importance_terms(vae, x, 4000)
        se = (log_px_z + log_pz - log_qz).sum(1).std().item() / math.sqrt(K)
        se_kl = (log_qz - log_pz).sum(1).std().item() / math.sqrt(K)
    pyro.set_rng_seed(3)
    estimate = -Trace_ELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, vae.guide, x)
    assert abs(estimate - exact) < 5 * se, (estimate, exact, se)
    # and the library's own per-example estimator agrees
    from pyro_vae.infer.evaluate import importance_sample

    result = importance_sample(vae, x, K)
    assert abs(result.elbo.sum().item() - exact) < 5 * se
    assert abs(result.kl.sum().item() - kl.sum().item()) < 5 * se_kl


def test_minibatch_scale_is_unbiased_for_the_full_data_elbo():
    """Averaged over all batches, (N/B) * batch ELBO equals the full-data ELBO (fixed z)."""
    N, B = 12, 3
    vae = linear_gaussian_vae(num_data=N)
    x = torch.randn(N, 3)
    z = torch.randn(N, 2)
    elbo = Trace_ELBO(max_plate_nesting=1)
    batches = []
    for start in range(0, N, B):
        index = torch.arange(start, start + B)
        guide = fixed_z(vae, z[index], x[index], index)
        batches.append(elbo.loss(vae.model, guide, x[index], index))
    vae.num_data = None
    full = elbo.loss(vae.model, fixed_z(vae, z, x), x)
    assert sum(batches) / len(batches) == pytest.approx(full, rel=1e-5)


def test_model_and_guide_register_every_parameter_once():
    vae = linear_gaussian_vae(num_data=10)
    x, index = torch.randn(2, 3), torch.arange(2)
    with poutine.trace(param_only=True) as capture:
        guide = poutine.trace(vae.guide).get_trace(x, index)
        poutine.replay(vae.model, trace=guide)(x, index)
    seen = [site["value"] for site in capture.trace.nodes.values()]
    assert {id(p) for p in seen} == {id(p) for p in vae.parameters()}
    assert len(seen) == len(list(vae.parameters()))


def test_parameter_limit_is_checked_before_allocating():
    from pyro_vae.errors import SpecError

    spec = Spec.from_dict({"model": {"encoder": {"kind": "mlp", "hidden": [16384, 16384, 16384]}}}).model
    with pytest.raises(SpecError, match="parameters for data of shape .* over the limit"):
        build_vae(spec, (784,))
