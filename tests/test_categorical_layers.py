"""The categorical y as part of the one latent structure (model/categorical.py): y above
stacked continuous layers (the Gaussian mixture on the top layer, p(z_2|y)) and y beside
them read by the decoder (M2 on two layers). A two-layer linear-Gaussian mixture, whose
log p(x) is a closed form (a mixture of Gaussians), checks evaluation's exact sum over y;
TraceEnum_ELBO's loss is checked against scipy's densities at the draws it made; every
estimator that can treat y trains on the two-layer structure."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp, softplus

from helpers import run_cli, trace_enum_loss_at_draws
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

LINEAR = {"kind": "mlp", "hidden": []}
C, D = 3, 3
A, OFFSET, SD, S = 1.2, 0.3, 0.7, 0.5  # p(z1|z2) = N(A z2 + OFFSET, SD^2); p(x|z1) = N(w z1 + b, S^2 I)
MEANS, SDEVS = np.array([-2.0, 0.5, 2.5]), np.array([0.6, 1.0, 0.8])  # p(z2|y)


def softplus_inverse(y):
    return y + math.log(-math.expm1(-y))


def two_layer_mixture(shape="mixture", seed=0):
    """(vae, x, exact log p(x)) for p(y) p(z2|y) p(z1|z2) p(x|z1) (``mixture``) or
    p(y) p(z2) p(z1|z2) p(x|z1, y) (``m2``, x's mean shifted by v_y), every network linear,
    the guide q(y|x) q(z1|x) q(z2|z1) set wide around the truth."""
    spec = Spec.from_dict({"model": {
        "latent_dim": 1, "upper_layers": [{"latent_dim": 1, "encoder": LINEAR, "prior_network": LINEAR}],
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": S, "min_scale": 0.0},
        "encoder": LINEAR, "decoder": LINEAR,
        "discrete": {"classes": C, "shape": shape, "encoder_reads_y": False, "classifier": LINEAR},
    }}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,)).double()
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 1, D), rng.normal(0, 1, D)
    s = softplus(vae.likelihood.raw_scale.item())
    shifts = rng.normal(0, 2, (C, D)) if shape == "m2" else np.zeros((C, D))  # v_y, orthogonal to w so that
    shifts -= np.outer(shifts @ w, w) / (w @ w)  # z1's posterior is the same for every y (q(z1|x) ignores y)
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(torch.as_tensor(np.concatenate([w[:, None], shifts.T], 1)[:, : 1 + (C if shape == "m2" else 0)]))
        vae.decoder.net[0].bias.copy_(torch.as_tensor(b))
        down = vae.upper[0].down.network.net[0]
        down.weight.copy_(torch.tensor([[A], [0.0]], dtype=torch.float64))
        down.bias.copy_(torch.tensor([OFFSET, softplus_inverse(SD - 1e-4)], dtype=torch.float64))
        if shape == "mixture":
            vae.prior.loc.copy_(torch.as_tensor(MEANS).reshape(C, 1))
            vae.prior.raw_scale.copy_(torch.as_tensor([softplus_inverse(v) for v in SDEVS]).reshape(C, 1))
        # q(z1|x): p(x|z1) as a density of z1, twice as wide; q(z2|z1) = N((z1 - OFFSET)/A, 1.5^2)
        ww = w @ w
        enc = vae.encoder.net[0]
        enc.weight.zero_()
        enc.weight[0] = torch.as_tensor(w / ww)
        enc.bias.copy_(torch.tensor([-(w @ b) / ww, softplus_inverse(2 * s / math.sqrt(ww))], dtype=torch.float64))
        top = vae.upper[0].encoder.net[0]
        top.weight.copy_(torch.tensor([[1 / A], [0.0]], dtype=torch.float64))
        top.bias.copy_(torch.tensor([-OFFSET / A, softplus_inverse(1.5)], dtype=torch.float64))
    means, sdevs = (MEANS, SDEVS) if shape == "mixture" else (np.zeros(C), np.ones(C))  # z2|y
    means = w * (A * means[:, None] + OFFSET) + b + shifts  # x|y: (C, D)
    covs = [np.outer(w, w) * (A**2 * v**2 + SD**2) + s**2 * np.eye(D) for v in sdevs]
    y = rng.integers(0, C, 40)
    x = np.stack([rng.multivariate_normal(means[c], covs[c]) for c in y])
    exact = logsumexp([stats.multivariate_normal(means[c], covs[c]).logpdf(x) - math.log(C) for c in range(C)], axis=0)
    return vae, torch.as_tensor(x), exact


@pytest.mark.parametrize("shape", ["mixture", "m2"])
def test_evaluate_sums_y_exactly_over_two_continuous_layers(shape):
    """log p(x) = log sum_y p(y) N(x; w(A mu_y + c) + b + v_y, w w^T (A^2 s_y^2 + SD^2) + S^2 I)."""
    vae, x, exact = two_layer_mixture(shape)
    torch.manual_seed(1)
    result = importance_sample(vae, x, 5000)
    error = result.log_likelihood.numpy() - exact
    # Monte Carlo error: up to 0.055 per example at S = 5000 (q is twice as wide as the
    # posterior and ignores y), centred on 0; a missing or doubled p(y) would be log 3 = 1.1
    assert np.abs(error).max() < 0.1, error
    assert abs(error.mean()) < 0.02, error.mean()
    assert result.class_probs.shape == (40, C)
    assert torch.allclose(result.class_probs.sum(-1), torch.ones(40, dtype=torch.float64))


def test_the_marginal_prior_of_the_layers_is_the_mixture_over_y():
    """latent_prior() (what sampling and analysis read) is sum_y p(y) p(z2|y) p(z1|z2)."""
    vae, _, _ = two_layer_mixture()
    z = torch.randn(50, 2, dtype=torch.float64)
    z1, z2 = z[:, 0].numpy(), z[:, 1].numpy()
    log_p = logsumexp([stats.norm.logpdf(z2, MEANS[c], SDEVS[c]) - math.log(C) for c in range(C)], axis=0)
    log_p += stats.norm.logpdf(z1, A * z2 + OFFSET, SD)
    assert np.allclose(vae.latent_prior().log_prob(z).detach().numpy(), log_p, atol=1e-5)


def test_trace_enum_loss_on_two_layers_with_y_against_scipy_at_its_draws():
    """-ELBO = -(N/B) sum_x E_q(z|x)[sum_y q(y|x) (log p(y) p(z2|y) - log q(y|x))
    + log p(z1|z2) p(x|z1) - log q(z1|x) q(z2|z1)] at the guide's own draws (y summed)."""
    vae, x, _ = two_layer_mixture()
    x = x[:6]
    loss, _, z = trace_enum_loss_at_draws(vae, x, num_data=30)  # the guide's draws: y is enumerated, not drawn
    z1, z2, xs = z[:, 0].numpy(), z[:, 1].numpy(), x.numpy()
    W, bias = (p.detach().numpy() for p in (vae.decoder.net[0].weight, vae.decoder.net[0].bias))
    We, be = (p.detach().numpy() for p in (vae.encoder.net[0].weight, vae.encoder.net[0].bias))
    Wt, bt = (p.detach().numpy() for p in (vae.upper[0].encoder.net[0].weight, vae.upper[0].encoder.net[0].bias))
    Wc, bc = (p.detach().numpy() for p in (vae.classifier.net[0].weight, vae.classifier.net[0].bias))
    h1, h2 = xs @ We.T + be, z1[:, None] @ Wt.T + bt
    log_q = (stats.norm.logpdf(z1, h1[:, 0], softplus(h1[:, 1]) + 1e-4)
             + stats.norm.logpdf(z2, h2[:, 0], softplus(h2[:, 1]) + 1e-4))
    log_qy = xs @ Wc.T + bc
    log_qy = log_qy - logsumexp(log_qy, -1, keepdims=True)
    per_y = np.stack([stats.norm.logpdf(z2, MEANS[c], SDEVS[c]) for c in range(C)], -1) - math.log(C) - log_qy
    elbo = ((np.exp(log_qy) * per_y).sum(-1) + stats.norm.logpdf(z1, A * z2 + OFFSET, SD)
            + stats.norm.logpdf(xs, z1[:, None] * W[:, 0] + bias, S).sum(-1) - log_q)
    assert loss == pytest.approx(-30 / 6 * elbo.sum(), rel=1e-6)


@pytest.mark.parametrize("shape", ["mixture", "m2"])
@pytest.mark.parametrize("kind", ["trace_enum", "trace_elbo", "trace_graph", "relaxed"])
def test_every_estimator_that_treats_y_trains_on_two_layers(shape, kind):
    """A step of each estimator: a finite loss, and gradients reach q(y|x)'s classifier, every
    layer's encoder and conditional prior (the relaxed y through its reparameterized sample)."""
    vae, x, _ = two_layer_mixture(shape)
    vae = vae.float()
    x = x.float()
    estimator = ESTIMATORS.build({"kind": kind})
    vae.use_estimator(estimator, kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = estimator.loss_and_grads(vae.model, vae.guide, x, None)
    assert math.isfinite(loss)
    for module in (vae.classifier, vae.encoder, vae.upper[0].encoder, vae.upper[0].down):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads), (kind, shape, module)


def test_m2_on_two_layers_decodes_z1_and_y_and_its_marginal_p_x_sums_y():
    vae, x, _ = two_layer_mixture("m2")
    assert vae.decoder.in_shape == (1 + C,)
    z = torch.randn(5, 2, dtype=torch.float64)
    eye = torch.eye(C, dtype=torch.float64)
    per_y = torch.stack([vae.p_x_given(z, eye[c].expand(5, C), x[:5]).log_prob(x[:5]) for c in range(C)], -1)
    assert torch.allclose(vae.p_x(z, x[:5]).log_prob(x[:5]), torch.logsumexp(per_y, -1) - math.log(C))


@pytest.mark.integration
@pytest.mark.slow  # ~25 s of CPU each; the unit tests above cover both shapes
@pytest.mark.parametrize("shape", ["mixture", "m2"])
def test_cli_trains_evaluates_and_samples_y_on_two_layers(shape, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, train=(rng.random((96, 12)) < 0.3).astype(np.float32),
             test=(rng.random((32, 12)) < 0.3).astype(np.float32))
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--model", "hvae", "--data", data, "--out", run, "--quiet", "--set", "inference.schedule.epochs=2",
                           "--set", f"model.discrete={{classes=3, shape=\"{shape}\", encoder_reads_y=false}}",
                           "--set", "model.latent_dim=2", "--set", "model.upper_layers.0.latent_dim=2",
                           "--inference", "trace_enum")
    assert code == 0, err
    code, out, err = run_cli("evaluate", run, "--samples", "8")
    assert code == 0, err
    assert "log" in out
    code, _, err = run_cli("sample", run, "--n", "6")
    assert code == 0, err
    code, _, err = run_cli("encode", run, "--out", tmp_path / "codes.npz")
    assert code == 0, err
    codes = np.load(tmp_path / "codes.npz")
    assert codes["mean"].shape[1] == 4 and list(codes["layer_dims"]) == [2, 2]
    assert codes["q_y"].shape[1] == 3 and np.allclose(codes["q_y"].sum(1), 1, atol=1e-5)
