"""Covariates in every latent structure: stacked layers and a categorical y.

Closed forms: a two-layer linear-Gaussian model whose every level reads c has a Gaussian
log p(x | c); a mixture of linear Gaussians (GMVAE and M2 shapes) with a covariate shift has
log p(x | c) = logsumexp_y [log p(y) + log N(x; m_y(c), C)], summed here by brute force.
`evaluate` (importance sampling, the exact sum over y) must give them: exactly where the guide
is the exact posterior (every importance weight is then p(x, y | c) / q(y | x, c)'s constant),
within Monte Carlo error off it.
"""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from pyro_vae.errors import SpecError
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.model.condition import given as conditioned_on
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

from linear_gaussian import LINEAR, softplus_inverse

F64 = torch.float64
D = 3
LAYOUT = [3, 0]  # c = (k, u): a category of 3 (one-hot e_k) and a continuous u; f(c) = (e_k, u)


def _features(c: np.ndarray) -> np.ndarray:
    return np.concatenate([np.eye(3)[c[:, 0].astype(int)], c[:, 1:]], -1)


def _covariates(n, rng):
    return np.stack([rng.integers(0, 3, n).astype(float), rng.normal(0, 1, n)], -1)


def _set_conditioned(net, coef, intercept, sdev, off=0.0, widen=1.0):
    """A conditioned linear network (2 outputs: mean, raw scale) to mean = coef . input +
    intercept(f) + off, sd = widen * sdev; ``intercept`` affine in f (a function of f's rows)."""
    basis = np.vstack([np.zeros(4), np.eye(4)])
    values = np.array([intercept(b) for b in basis])
    weight = net.network.net[0].weight
    weight.zero_()
    weight[0] = torch.as_tensor(coef, dtype=F64) + off
    net.network.net[0].bias.copy_(torch.tensor([values[0] + off, softplus_inverse(widen * sdev - 1e-4)], dtype=F64))
    net.inject["0"].weight.zero_()
    net.inject["0"].weight[0] = torch.as_tensor(values[1:] - values[0], dtype=F64)


def _gaussian_conditional(mean, cov, target, given):
    """(coefficients, intercept, variance) of index ``target`` given ``given`` (mean: a vector)."""
    cross = cov[np.ix_([target], given)]
    coef = np.linalg.solve(cov[np.ix_(given, given)], cross.T).T[0]
    var = cov[target, target] - (cross @ np.linalg.solve(cov[np.ix_(given, given)], cross.T))[0, 0]
    return coef, mean[target] - coef @ mean[given], var


# --- two layers ------------------------------------------------------------------------------
#
# p(z2 | c) = N(alpha.f + a0, sd2^2), p(z1 | z2, c) = N(a z2 + gamma.f + c0, sd1^2),
# p(x | z1, c) = N(w z1 + V f + b, s^2 I): given c, (z2, z1, x) is jointly Gaussian, its mean
# affine in f and its covariance free of c, so every conditional of the posterior has a
# coefficient free of c and an intercept affine in f: linear networks with a covariate term
# hold it exactly.


def two_layer_conditional(guide, n=24, seed=0, exact=True):
    """(vae, x, c, exact log p(x | c) per example)."""
    layer = {"latent_dim": 1, "encoder": LINEAR, "prior_network": LINEAR}
    spec = Spec.from_dict({"model": {
        "latent_dim": 1, "upper_layers": [layer], "inference_network": guide, "encoder": LINEAR, "decoder": LINEAR,
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5, "min_scale": 0.0},
        "condition": {"prior": True, "prior_network": LINEAR}},
        "data": {"name": "digits", "covariates": ["k", "u"]}}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,), covariates=LAYOUT).double()
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale).item()
    rng = np.random.default_rng(seed)
    a, c0, sd1, sd2, a0 = 1.2, 0.3, 0.7, 1.3, -0.4
    alpha, gamma = rng.normal(0, 1, 4), rng.normal(0, 1, 4)
    w, b, V = rng.normal(0, 1, D), rng.normal(0, 1, D), rng.normal(0, 1, (D, 4))
    A = np.zeros((2 + D, 2 + D))  # (z2, z1, x) = A (e2, e1, e) + mean(f)
    A[0, 0] = sd2
    A[1, 0], A[1, 1] = a * sd2, sd1
    A[2:, 0], A[2:, 1], A[2:, 2:] = w * a * sd2, w * sd1, s * np.eye(D)
    cov = A @ A.T

    def mean(f):
        m2 = alpha @ f + a0
        m1 = a * m2 + gamma @ f + c0
        return np.concatenate([[m2, m1], w * m1 + V @ f + b])

    c = _covariates(n, rng)
    f = _features(c)
    x = np.array([mean(fi)[2:] for fi in f]) + rng.multivariate_normal(np.zeros(D), cov[2:, 2:], size=n)
    exact_logpx = np.array([stats.multivariate_normal(mean(fi)[2:], cov[2:, 2:]).logpdf(xi) for fi, xi in zip(f, x)])
    xs = list(range(2, 2 + D))
    off, widen = (0.0, 1.0) if exact else (0.03, 1.3)

    def conditional(target, given):
        coef, _, var = _gaussian_conditional(mean(np.zeros(4)), cov, target, given)
        return coef, (lambda fb: _gaussian_conditional(mean(fb), cov, target, given)[1]), math.sqrt(var)

    with torch.no_grad():
        prior = vae.prior.normal.network.net[0]
        prior.weight.zero_()
        prior.weight[0] = torch.as_tensor(alpha)
        prior.bias.copy_(torch.tensor([a0, softplus_inverse(sd2 - 1e-4)], dtype=F64))
        _set_conditioned(vae.upper[0].down.network, [a], lambda fb: gamma @ fb + c0, sd1)
        decoder = vae.decoder
        decoder.network.net[0].weight.copy_(torch.as_tensor(w).reshape(D, 1))
        decoder.network.net[0].bias.copy_(torch.as_tensor(b))
        decoder.inject["0"].weight.copy_(torch.as_tensor(V))
        if guide == "top_down":  # q(z2 | x, c), then q(z1 | x, z2, c)
            _set_conditioned(vae.upper[0].encoder, *conditional(0, xs), off, widen)
            _set_conditioned(vae.encoder, *conditional(1, xs + [0]), off, widen)
        else:  # bottom_up: q(z1 | x, c), then q(z2 | z1, c) = p(z2 | z1, c)
            _set_conditioned(vae.encoder, *conditional(1, xs), off, widen)
            _set_conditioned(vae.upper[0].encoder, *conditional(0, [1]), off, widen)
    return vae, torch.as_tensor(x), torch.as_tensor(c), exact_logpx


def exact_under_own_covariates(vae, x, c, exact, samples):
    """evaluate's log p(x | c) is ``exact`` (to 1e-6) under each example's own c, and not
    under another category's; returns the estimates."""
    result = importance_sample(vae, x, samples, condition=c)
    np.testing.assert_allclose(result.log_likelihood.numpy(), exact, atol=1e-6)
    swapped = c.clone()
    swapped[:, 0] = (c[:, 0] + 1) % 3  # another category: another p(x | c)
    assert (np.abs(importance_sample(vae, x, samples, condition=swapped).log_likelihood.numpy() - exact) > 1e-3).all()
    return result


@pytest.mark.parametrize("guide", ["top_down", "bottom_up"])
def test_two_layer_log_p_x_given_c_is_the_closed_form_at_the_exact_posterior(guide):
    vae, x, c, exact = two_layer_conditional(guide)
    result = exact_under_own_covariates(vae, x, c, exact, 10)
    np.testing.assert_allclose(result.elbo.numpy(), exact, atol=1e-6)


def test_two_layer_samples_draw_each_rows_own_p_z_given_c():
    """sample(n) under n rows of c: one draw of (z_1, z_2) per row, z_2 ~ p(z_2 | c) of that
    row (mean alpha.f + a0, sd 1.3) and z_1 ~ p(z_1 | z_2, c)."""
    vae, _, _, _ = two_layer_conditional("top_down")
    alpha = vae.prior.normal.network.net[0].weight[0].detach().numpy()
    c = torch.tensor([[k, u] for k, u in ((0, 0.0), (2, 1.0)) for _ in range(4000)], dtype=F64)
    torch.manual_seed(0)
    z, means = vae.sample(len(c), condition=c)
    assert z.shape == (8000, 2) and means.shape == (8000, D)
    top = z[:, 1].reshape(2, 4000)
    expected = [alpha @ _features(np.array([[k, u]]))[0] - 0.4 for k, u in ((0, 0.0), (2, 1.0))]
    np.testing.assert_allclose(top.mean(1).numpy(), expected, atol=0.08)
    np.testing.assert_allclose(top.std(1).numpy(), [1.3, 1.3], rtol=0.05)


@pytest.mark.parametrize("guide", ["top_down", "bottom_up"])
def test_two_layer_log_p_x_given_c_within_monte_carlo_error(guide):
    vae, x, c, exact = two_layer_conditional(guide, exact=False)
    torch.manual_seed(0)
    result = importance_sample(vae, x, 3000, condition=c)
    gap = result.log_likelihood.numpy() - exact
    assert np.abs(gap).max() < 0.05, gap
    assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(len(gap)) + 1e-3, gap
    assert (result.elbo.numpy() < exact).all()


# --- a categorical y with a covariate shift ------------------------------------------------------
#
# mixture (GMVAE): p(y) = 1/K, p(z | y) = N(mu_y, sigma^2 I), p(x | z, c) = N(W z + V f + b, s^2 I);
# m2: p(y) = 1/K, p(z | c) = N(A f + a, sigma^2 I), p(x | y, z, c) = N(W z + U e_y + V f + b, s^2 I).
# Either way x | y, c ~ N(m_y(c), W sigma^2 W^T + s^2 I), and the posterior
# p(z | x, y, c) = N(P^-1 [m_z / sigma^2 + W^T (x - (the decoder's other terms)) / s^2], P^-1),
# P = I / sigma^2 + W^T W / s^2, diagonal (W's columns orthogonal): linear in (x, e_y, f).

K, LZ, SIGMA = 3, 2, 0.8


def discrete_conditional(shape, n=30, seed=0, exact=True):
    """(vae, x, c, brute-force log p(x | c) per example)."""
    condition = {"prior": True, "prior_network": LINEAR} if shape == "m2" else {}
    spec = Spec.from_dict({"model": {
        "latent_dim": LZ, "encoder": LINEAR, "decoder": LINEAR, "discrete": {"classes": K, "shape": shape},
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5, "min_scale": 0.0},
        "condition": condition}, "data": {"name": "digits", "covariates": ["k", "u"]}}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,), covariates=LAYOUT).double()
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale).item()
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(0, 1, (D, D)))
    W = q[:, :LZ] * np.array([1.5, 0.8])
    b, V = rng.normal(0, 1, D), rng.normal(0, 1, (D, 4))
    mu = 2.0 * rng.normal(0, 1, (K, LZ))  # mixture: the class means of z
    U = 2.0 * rng.normal(0, 1, (D, K)) * (shape == "m2")  # m2: the class terms of x
    Az, az = rng.normal(0, 1, (LZ, 4)), rng.normal(0, 1, LZ)  # m2: p(z | c)
    P = 1 / SIGMA**2 + (W**2).sum(0) / s**2

    def z_mean(y, f):
        return mu[y] if shape == "mixture" else Az @ f + az

    def other_terms(y, f):  # the decoder's mean of x besides W z
        return V @ f + b + U[:, y]

    c = _covariates(n, rng)
    f = _features(c)
    y = rng.integers(0, K, n)
    cov = SIGMA**2 * W @ W.T + s**2 * np.eye(D)
    x = np.array([W @ z_mean(yi, fi) + other_terms(yi, fi) for yi, fi in zip(y, f)])
    x += rng.multivariate_normal(np.zeros(D), cov, size=n)
    exact_logpx = np.array([logsumexp([stats.multivariate_normal(W @ z_mean(k, fi) + other_terms(k, fi), cov).logpdf(xi)
                                       for k in range(K)]) - math.log(K) for xi, fi in zip(x, f)])
    with torch.no_grad():
        decoder = vae.decoder.network.net[0]
        decoder.weight.zero_()
        decoder.weight[:, :LZ] = torch.as_tensor(W)
        if shape == "m2":
            decoder.weight[:, LZ:] = torch.as_tensor(U)
        decoder.bias.copy_(torch.as_tensor(b))
        vae.decoder.inject["0"].weight.copy_(torch.as_tensor(V))
        if shape == "mixture":
            vae.prior.loc.copy_(torch.as_tensor(mu))
            vae.prior.raw_scale.fill_(softplus_inverse(SIGMA))
        else:
            prior = vae.prior.normal.network.net[0]
            prior.weight.zero_()
            prior.weight[:LZ] = torch.as_tensor(Az)
            prior.bias.copy_(torch.as_tensor(np.concatenate([az, [softplus_inverse(SIGMA - 1e-4)] * LZ])))
        # q(z | x, y, c): mean = (m_z(y, f) / sigma^2 + W^T (x - other(y, f)) / s^2) / P, linear in (x, e_y, f)
        encoder = vae.encoder.network.net[0]
        encoder.weight.zero_()
        encoder.weight[:LZ, :D] = torch.as_tensor((W / s**2).T / P[:, None])
        for k in range(K):  # the class's own terms, on one-hot y's columns
            encoder.weight[:LZ, D + k] = torch.as_tensor(
                ((mu[k] / SIGMA**2 if shape == "mixture" else 0) - W.T @ U[:, k] / s**2) / P)
        encoder.bias[:LZ] = torch.as_tensor(((az / SIGMA**2 if shape == "m2" else 0) - W.T @ b / s**2) / P)
        on_f = -W.T @ V / s**2 + (Az / SIGMA**2 if shape == "m2" else 0)
        vae.encoder.inject["0"].weight.zero_()
        vae.encoder.inject["0"].weight[:LZ] = torch.as_tensor(on_f / P[:, None])
        encoder.bias[LZ:] = torch.as_tensor([softplus_inverse((1.3 if not exact else 1.0) * v - 1e-4) for v in 1 / np.sqrt(P)])
        if not exact:
            encoder.weight[:LZ, :D] += 0.03 * torch.as_tensor(rng.normal(0, 1, (LZ, D)))
    return vae, torch.as_tensor(x), torch.as_tensor(c), exact_logpx


@pytest.mark.parametrize("shape", ["mixture", "m2"])
def test_discrete_log_p_x_given_c_is_the_brute_force_sum_over_y(shape):
    vae, x, c, exact = discrete_conditional(shape)
    exact_under_own_covariates(vae, x, c, exact, 8)
    # the marginals the rest of the library reads (q(z|x, c) over y, p(x|z, c) over y for m2) score as the sum
    torch.manual_seed(0)
    off = discrete_conditional(shape, exact=False)[0]
    gap = importance_sample(off, x, 2000, condition=c).log_likelihood.numpy() - exact
    assert np.abs(gap).max() < 0.05, gap


@pytest.mark.parametrize("shape", ["mixture", "m2"])
def test_the_marginals_over_y_read_each_examples_own_covariates(shape):
    """q(z | x, c) = sum_y q(y | x, c) q(z | x, y, c) and (m2) p(x | z, c) = sum_y p(y) p(x | y, z, c),
    computed with every class at once, equal the sums of the per-class conditionals row by row."""
    vae, x, c, _ = discrete_conditional(shape, n=6)
    torch.manual_seed(1)
    z = torch.randn(4, len(x), LZ, dtype=F64)
    eye = torch.eye(K, dtype=F64)
    with torch.no_grad():
        q_y = torch.log_softmax(vae.q_y_logits(x, condition=c), -1)
        u = vae.encoder_input(x)
        per_class = torch.stack([q_y[:, k] + vae.q_z(u, eye[k].expand(len(x), K), condition=c).log_prob(z)
                                 for k in range(K)], -1)
        np.testing.assert_allclose(vae.q(x, condition=c).log_prob(z).numpy(), torch.logsumexp(per_class, -1).numpy(),
                                   atol=1e-9)
        if shape == "m2":
            per_class = torch.stack([vae.p_x_given(z, eye[k].expand(len(x), K), x, condition=c).log_prob(x)
                                     for k in range(K)], -1)
            np.testing.assert_allclose(vae.p_x(z, x, condition=c).log_prob(x).numpy(),
                                       (torch.logsumexp(per_class, -1) - math.log(K)).numpy(), atol=1e-9)


# --- every estimator the structure supports trains it -------------------------------------------

from test_covariates import _fit, _table  # noqa: E402

LAYER = {"latent_dim": 2, "encoder": {"kind": "mlp", "hidden": [8]}, "prior_network": {"kind": "mlp", "hidden": [8]}}
STRUCTURES = {
    "top_down": {"upper_layers": [LAYER], "inference_network": "top_down"},
    "bottom_up": {"upper_layers": [LAYER], "inference_network": "bottom_up"},
    "ladder": {"upper_layers": [LAYER], "inference_network": "ladder"},
    "mixture": {"discrete": {"classes": 3, "shape": "mixture", "classifier": {"kind": "mlp", "hidden": [8]}}},
    "m2": {"discrete": {"classes": 3, "shape": "m2", "classifier": {"kind": "mlp", "hidden": [8]}}},
    "m2_two_layers": {"upper_layers": [LAYER], "inference_network": "top_down",
                      "discrete": {"classes": 3, "shape": "m2", "encoder_reads_y": False,
                                   "classifier": {"kind": "mlp", "hidden": [8]}}},
    "mixture_per_batch": {"prior": {"kind": "mixture", "components": 2}, "condition": {"prior_per_category": "batch"}},
    "vamp_per_batch_two_layers": {"upper_layers": [LAYER], "inference_network": "top_down",
                                  "prior": {"kind": "vamp", "components": 5},
                                  "condition": {"prior_per_category": "batch", "encoder": False}},
}
LAYERED = ["trace_elbo", "trace_mean_field", "iwae", "renyi", "stl", "iwae_dreg", "tail_adaptive", "trace_graph"]
WITH_Y = ["trace_enum", "trace_elbo", "trace_graph", "relaxed"]
CASES = ([("top_down", e) for e in LAYERED] + [("bottom_up", "trace_elbo"), ("ladder", "iwae_dreg")]
         + [(shape, e) for shape in ("mixture", "m2") for e in WITH_Y] + [("m2_two_layers", "trace_enum"), ("mixture_per_batch", "trace_elbo"),
            ("vamp_per_batch_two_layers", "iwae")])


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    x, batch, age = _table(100)
    path = tmp_path_factory.mktemp("structure") / "cells.npz"
    np.savez(path, train=x, train_batch=batch, train_age=age)
    return path


@pytest.mark.parametrize("structure, estimator", CASES)
def test_every_estimator_trains_each_structure_with_covariates(table_file, structure, estimator):
    model = dict(STRUCTURES[structure])
    condition = model.pop("condition", {"prior": structure != "mixture"})  # the mixture's p(z|y) is the prior
    prior, per_category = condition.get("prior", False), "prior_per_category" in condition
    spec = Spec.from_dict({
        "model": {"latent_dim": 2, "likelihood": {"kind": "gaussian"}, "encoder": {"kind": "mlp", "hidden": [8]},
                  "decoder": {"kind": "mlp", "hidden": [8]}, "condition": condition, **model},
        "inference": {"estimator": {"kind": estimator},
                      "schedule": {"epochs": 1, "batch_size": 100 if estimator == "tail_adaptive" else 25}},
        "data": {"path": str(table_file), "covariates": ["batch", "age"], "test_fraction": 0.0,
                 "valid_fraction": 0.2}})
    trainer, state = _fit(spec)
    assert all(math.isfinite(row["val_elbo"]) and math.isfinite(row["train_elbo"]) for row in state.history)
    moved = {k for k, v in trainer.vae.state_dict().items() if not torch.equal(v, trainer.initial[k])}
    parts = ["decoder.inject."] + (["encoder.inject."] if condition.get("encoder", True) else [])
    if "upper_layers" in STRUCTURES[structure]:
        parts += ["upper.0.encoder.inject."] if condition.get("encoder", True) else []
        parts += ["upper.0.down.network.inject."] if prior else []
    if "discrete" in STRUCTURES[structure]:
        parts += ["classifier.inject."]
    if prior:
        parts += ["prior.normal.network."]
    if per_category:  # each batch's own prior
        parts += ["prior.priors.0.", "prior.priors.1."]
    for part in parts:
        assert any(k.startswith(part) for k in moved), part  # c reaches (and trains) every part that reads it


def test_the_labelled_plate_reads_its_own_rows_covariates():
    """M2 semi-supervised: the labelled examples (all of category 0 here) enter the labelled
    plate under their own training rows' c: the decoder's term of categories 1 and 2 gets no
    gradient from that plate, category 0's does."""
    vae, x, c, _ = discrete_conditional("m2", n=40)
    vae.num_data = len(x)
    vae.conditioning.observe(c)
    rows = torch.nonzero(c[:, 0] == 0).flatten()
    vae.supervise(x[rows], torch.zeros(len(rows), dtype=torch.long), rows, alpha=1.0, batch=3)
    batch = torch.nonzero(c[:, 0] != 0).flatten()[:5]
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[batch], batch, part="labelled")
    loss.backward()
    weight = vae.decoder.inject["0"].weight.grad  # columns: one-hot k = 0, 1, 2, u
    assert weight[:, 0].abs().sum() > 0 and weight[:, 1:3].abs().sum() == 0
    classifier = vae.classifier.inject["0"].weight.grad  # log q(y|x, c) of the labelled rows (alpha)
    assert classifier[:, 0].abs().sum() > 0 and classifier[:, 1:3].abs().sum() == 0


# --- any prior kind per category: p(z | c) = p_k(z) ----------------------------------------------


def _per_category(prior, condition=None, covariates=("k", "u")):
    spec = Spec.from_dict({"model": {"latent_dim": 2, "encoder": LINEAR, "decoder": LINEAR, "prior": prior,
                                     "condition": {"prior_per_category": "k", **(condition or {})}},
                           "data": {"name": "digits", "covariates": list(covariates)}})
    torch.manual_seed(0)
    return build_vae(spec.model, (D,), covariates=LAYOUT).double()


def test_a_mixture_prior_per_category_scores_each_row_under_its_own_categorys_mixture():
    vae = _per_category({"kind": "mixture", "components": 2})
    assert len(vae.prior.priors) == 3
    with torch.no_grad():
        for prior in vae.prior.priors:  # apart, and not at their (shared-stream) start
            prior.locs.normal_(0, 2)
            prior.logits.normal_()
            prior.raw_scales.normal_(0, 0.3)
    rng = np.random.default_rng(0)
    c = torch.as_tensor(_covariates(12, rng))
    z = torch.randn(5, 12, 2, dtype=F64)
    got = vae.latent_prior(condition=c).log_prob(z).detach().numpy()
    expected = np.empty((5, 12))
    for b in range(12):
        prior = vae.prior.priors[int(c[b, 0])]
        weights = torch.log_softmax(prior.logits, -1).detach().numpy()
        locs, scales = prior.locs.detach().numpy(), torch.nn.functional.softplus(prior.raw_scales).detach().numpy()
        for s_ in range(5):
            expected[s_, b] = logsumexp([weights[j] + stats.norm(locs[j], scales[j]).logpdf(z[s_, b].numpy()).sum()
                                         for j in range(2)])
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_a_vamp_prior_per_category_is_the_mean_of_its_own_pseudo_inputs_posteriors():
    vae = _per_category({"kind": "vamp", "components": 4}, {"encoder": False})
    first, second = (p.pseudo_inputs for p in vae.prior.priors[:2])
    assert first.shape == (4, D) and not torch.equal(first, second)  # each category its own pseudo-inputs
    c = torch.tensor([[0.0, 0.1], [2.0, -1.0], [1.0, 0.3]], dtype=F64)
    z = torch.randn(7, 3, 2, dtype=F64)
    got = vae.latent_prior(condition=c).log_prob(z).detach().numpy()
    for b in range(3):
        u = vae.prior.priors[int(c[b, 0])].inputs()
        h = vae.encoder(u).detach().numpy()  # (mean, raw scale) of q(z | u_j) (encoder = false: x alone)
        loc, scale = h[:, :2], np.logaddexp(0, h[:, 2:]) + 1e-4  # sigma = softplus + MIN_SCALE
        mixture = [[stats.norm(loc[j], scale[j]).logpdf(z[s_, b].numpy()).sum() for j in range(4)] for s_ in range(7)]
        np.testing.assert_allclose(got[:, b], logsumexp(mixture, -1) - math.log(4), atol=1e-6)


def test_samples_of_each_category_come_from_its_own_prior():
    vae = _per_category({"kind": "learned_normal"})
    with torch.no_grad():
        for k, prior in enumerate(vae.prior.priors):
            prior.loc.fill_(5.0 * k)
    c = torch.tensor([[k, 0.0] for k in (0, 1, 2) for _ in range(400)], dtype=F64)
    torch.manual_seed(0)
    z, _ = vae.sample(len(c), condition=c)
    means = z.reshape(3, 400, 2).mean(1).numpy()
    np.testing.assert_allclose(means, [[0, 0], [5, 5], [10, 10]], atol=0.2)


def test_prior_per_category_is_checked():
    with pytest.raises(SpecError, match="data.covariates does not"):
        Spec.from_dict({"model": {"condition": {"prior_per_category": "batch"}},
                        "data": {"name": "digits", "covariates": ["label"]}})
    with pytest.raises(SpecError, match="two priors"):
        Spec.from_dict({"model": {"condition": {"prior_per_category": "label", "prior": True}},
                        "data": {"name": "digits", "covariates": ["label"]}})
    spec = Spec.from_dict({"model": {"condition": {"prior_per_category": "u"}},
                           "data": {"name": "digits", "covariates": ["k", "u"]}})
    with pytest.raises(SpecError, match="'u' is continuous"):
        build_vae(spec.model, (D,), covariates=LAYOUT)


# --- the command line on each structure -------------------------------------------------------

from test_covariates import cli  # noqa: E402

CLI_STRUCTURES = {
    "m2": ["--set", "model.discrete.classes=3", "--set", 'model.discrete.shape="m2"', "--set", "model.condition.prior=true",
           "--inference", "trace_enum"],
    "two_layers_vamp_per_batch": ["--set", 'model.upper_layers=[{latent_dim = 2}]', "--set",
                                  'model.inference_network="top_down"', "--set", "model.prior.kind=vamp",
                                  "--set", "model.prior.components=5", "--set", "model.condition.encoder=false",
                                  "--set", 'model.condition.prior_per_category="batch"'],
}


@pytest.mark.slow
@pytest.mark.parametrize("structure", list(CLI_STRUCTURES))
def test_train_evaluate_analyze_encode_sample_on_each_structure(table_file, structure, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--set", f"data.path={table_file}", "--set", 'data.covariates=["batch","age"]',
                 "--set", "data.test_fraction=0", "--set", "model.likelihood.kind=gaussian", "--set", "model.latent_dim=2",
                 *CLI_STRUCTURES[structure], "--set", "inference.schedule.epochs=2",
                 "--set", "inference.schedule.batch_size=30", "--out", run, "--quiet")
    assert result.returncode == 0, result.stderr
    result = cli("evaluate", run, "--samples", 5)
    assert result.returncode == 0, result.stderr
    assert math.isfinite(json.loads((run / "evaluation" / "valid.json").read_text())["log_likelihood"])
    result = cli("analyze", run, "--samples", 5, "--limit", 20)
    assert result.returncode == 0, result.stderr
    assert (run / "analysis" / "latent_space_batch.png").is_file() and (run / "analysis" / "samples_by_batch.png").is_file()
    codes = tmp_path / "codes.npz"
    result = cli("encode", run, "--out", codes, "--transform", "batch=b0", "--split", "valid")
    assert result.returncode == 0, result.stderr
    written = np.load(codes)
    assert np.isfinite(written["transformed"]).all() and written["transformed"].shape == (10, 5)
    if "q_y" in written:  # q(y | x, c) under each example's own covariates
        np.testing.assert_allclose(written["q_y"].sum(-1), 1, atol=1e-5)
    result = cli("sample", run, "--condition", "batch=b1", "--n", 8)
    assert result.returncode == 0, result.stderr
    samples = np.load(run / "samples" / "samples.npz")
    assert (samples["condition"][:, 0] == 1).all() and np.isfinite(samples["mean"]).all()


@pytest.mark.parametrize("guide", ["top_down", "bottom_up"])
def test_a_two_layer_joint_keeps_the_covariates_it_was_built_with(guide):
    """p(z | c) and q(z | x, c) over stacked layers are walked again on every log_prob and
    rsample; built with condition=c they score under c wherever they are used (they read
    no c at all outside a conditioned call, or mixed the top prior's c with another c of the
    layers below: found by an outside review)."""
    vae, x, c, exact = two_layer_conditional(guide, n=6)
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prior, posterior = vae.latent_prior(condition=c), vae.q(x, condition=c)
    with conditioned_on(vae, c):
        expected_prior, expected_posterior = vae.latent_prior().log_prob(z), vae.q(x).log_prob(z)
    assert torch.allclose(prior.log_prob(z), expected_prior)  # outside any conditioned call
    assert torch.allclose(posterior.log_prob(z), expected_posterior)
    with conditioned_on(vae, c.flip(0)):  # under other covariates, still its own
        assert torch.allclose(prior.log_prob(z), expected_prior)
        assert torch.allclose(posterior.log_prob(z), expected_posterior)
        assert not torch.allclose(vae.latent_prior().log_prob(z), expected_prior)  # the premise: c matters
