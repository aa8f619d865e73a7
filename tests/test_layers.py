"""Stacked stochastic layers (model/layers.py): a one-layer spec is the VAE from before
layers existed, bit for bit; a two-layer linear-Gaussian model, whose log p(x) and exact
posterior are closed forms, checks evaluation and the path-derivative estimators; every
estimator's loss on two layers against an independent computation at its own draws."""

import hashlib
import json
from pathlib import Path

import pytest

from test_layers_identity_configs import CONFIGS, train_config

REFERENCE = json.loads((Path(__file__).parent / "data" / "one_layer_reference.json").read_text())


def _digest(weights) -> str:
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_one_layer_spec_trains_as_before_layers_bit_for_bit(name, tmp_path):
    elbos, weights = train_config(name, tmp_path)
    assert elbos == REFERENCE[name]["train_elbo"]
    assert _digest(weights) == REFERENCE[name]["weights_sha256"]


# --- the two-layer linear-Gaussian model: closed forms -----------------------------------

import math  # noqa: E402

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.special import logsumexp, softplus  # noqa: E402

import linear_gaussian as lg  # noqa: E402
from helpers import assert_one_line_error  # noqa: E402
from pyro_vae.errors import SpecError  # noqa: E402
from pyro_vae.infer.estimators import ESTIMATORS  # noqa: E402
from pyro_vae.infer.evaluate import importance_sample  # noqa: E402

GUIDES = ["top_down", "bottom_up", "ladder"]


@pytest.mark.parametrize("guide", GUIDES)
def test_evaluate_gives_the_closed_form_log_px_of_two_layers(guide):
    vae, x, exact = lg.make_two_layer(guide)
    result = importance_sample(vae, x, 20)  # the exact posterior: every log weight is log p(x)
    assert np.allclose(result.log_likelihood.numpy(), exact, atol=1e-6)
    assert np.allclose(result.elbo.numpy(), exact, atol=1e-6)
    vae, x, exact = lg.make_two_layer(guide, exact=False)
    result = importance_sample(vae, x, 4000)
    error = result.log_likelihood.numpy() - exact
    assert np.abs(error).max() < 0.1, error  # 0.04-0.07 at S = 2000, halving as S quadruples
    assert (result.elbo.numpy() < exact).all()  # the ELBO of a proposal off the posterior is below


def _encoder_side(vae):
    parts = [vae.encoder, vae.posterior] + [m for layer in vae.upper for m in (layer.encoder, layer.posterior)]
    return [p for part in parts for p in part.parameters()]


def _gradients(vae, table, x, calls=10):
    estimator = ESTIMATORS.build(table)
    params = _encoder_side(vae)
    draws = []
    for _ in range(calls):
        vae.zero_grad(set_to_none=True)
        estimator.loss_and_grads(vae.model, vae.guide, x)
        draws.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    return torch.stack(draws)


@pytest.mark.parametrize("guide", GUIDES)
def test_path_derivatives_give_zero_encoder_gradients_at_the_exact_two_layer_posterior(guide):
    vae, x, _ = lg.make_two_layer(guide)
    torch.manual_seed(0)
    for table in ({"kind": "stl", "k": 1}, {"kind": "stl", "k": 3}, {"kind": "iwae_dreg", "k": 5}):
        assert _gradients(vae, table, x).abs().max() < 1e-8, table
    for table in ({"kind": "trace_elbo"}, {"kind": "iwae", "k": 5}):
        assert _gradients(vae, table, x).var(0).sum() > 1e-4, table


@pytest.mark.parametrize("guide", GUIDES)
def test_each_layers_stopped_log_q_passes_no_gradient_to_any_parameter(guide):
    vae, x, _ = lg.make_two_layer(guide, exact=False)
    trace = poutine.trace(vae.guide).get_trace(x)
    sites = [site for site in trace.nodes.values() if site["type"] == "sample" and site["name"] != "data"]
    assert [site["name"] for site in sites] == (["z1", "z2"] if guide == "bottom_up" else ["z2", "z1"])
    params = list(vae.parameters())
    # the guide again at the same draws, detached: what remains is each layer's own density
    fixed = {site["name"]: site["value"].detach() for site in sites}
    trace = poutine.trace(poutine.condition(vae.guide, data=fixed)).get_trace(x)
    sites = [trace.nodes[name] for name in fixed]
    for site in sites:
        stopped = site["infer"]["stopped_log_prob"](site["value"]).sum()
        grads = torch.autograd.grad(stopped, params, allow_unused=True, retain_graph=True) if stopped.requires_grad else ()
        assert all(g is None or not g.any() for g in grads), site["name"]
        live = site["fn"].log_prob(site["value"].detach()).sum()  # the live density does reach parameters
        assert any(g is not None and g.any() for g in torch.autograd.grad(live, params, allow_unused=True, retain_graph=True))
        # and the stopped density is q's own value
        assert torch.allclose(site["infer"]["stopped_log_prob"](site["value"]), site["fn"].log_prob(site["value"]))


def _linear(net):
    layer = net.net[0]
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


def _normal(h):
    return h[..., 0], softplus(h[..., 1]) + 1e-4


def independent_log_q(vae, guide, x, z1, z2):
    """log q(z1, z2 | x) of the guide, from the linear networks' weights with numpy and scipy."""
    (Wb, bb), (Wt, bt) = _linear(vae.encoder), _linear(vae.upper[0].encoder)
    if guide == "top_down":
        m2, s2 = _normal(x @ Wt.T + bt)
        m1, s1 = _normal(np.concatenate([np.broadcast_to(x, z2.shape[:-1] + x.shape[-1:]), z2], -1) @ Wb.T + bb)
    elif guide == "bottom_up":
        m1, s1 = _normal(x @ Wb.T + bb)
        m2, s2 = _normal(z1 @ Wt.T + bt)
    else:
        up = x @ Wb.T + bb
        m2, s2 = _normal(up @ Wt.T + bt)
        mu_hat, s_hat = _normal(up)
        Wd, bd = _linear(vae.upper[0].down.network)
        mu_p, s_p = _normal(z2 @ Wd.T + bd)
        precision = s_hat**-2 + s_p**-2
        m1, s1 = (mu_hat * s_hat**-2 + mu_p * s_p**-2) / precision, precision**-0.5
    return stats.norm.logpdf(z1[..., 0], m1, s1) + stats.norm.logpdf(z2[..., 0], m2, s2)


def independent_log_weights(vae, guide, x, z):
    """log p(x, z1, z2) - log q(z1, z2 | x) at draws z (..., N, 2) = (z1, z2), independently."""
    Wd, bd = _linear(vae.upper[0].down.network)
    W, b = _linear(vae.decoder)
    z1, z2 = z[..., :1], z[..., 1:]
    loc1, scale1 = _normal(z2 @ Wd.T + bd)
    log_p = (stats.norm.logpdf(z2[..., 0]) + stats.norm.logpdf(z1[..., 0], loc1, scale1)
             + stats.norm.logpdf(x, z1 @ W.T + b, 0.5).sum(-1))
    return log_p - independent_log_q(vae, guide, x, z1, z2)


ESTIMATOR_TABLES = {
    "trace_elbo": ({"kind": "trace_elbo"}, 1, lambda lw: lw[0]),
    "iwae": ({"kind": "iwae", "k": 4}, 4, lambda lw: logsumexp(lw, 0) - math.log(len(lw))),
    "renyi": ({"kind": "renyi", "alpha": 0.5, "k": 4}, 4, lambda lw: 2 * (logsumexp(0.5 * lw, 0) - math.log(len(lw)))),
    "stl": ({"kind": "stl", "k": 3}, 3, lambda lw: lw.mean(0)),
    "iwae_dreg": ({"kind": "iwae_dreg", "k": 4}, 4, lambda lw: logsumexp(lw, 0) - math.log(len(lw))),
    "tail_adaptive": ({"kind": "tail_adaptive", "num_particles": 4}, 4, lambda lw: lw.sum(-1).mean(0)),
}


@pytest.mark.parametrize("estimator", list(ESTIMATOR_TABLES))
@pytest.mark.parametrize("guide", GUIDES)
def test_every_estimators_two_layer_loss_against_an_independent_computation(estimator, guide):
    """The loss an estimator reports, against scipy's densities at the draws it made: the
    same seed makes q's ancestral draw (vae.q(x).rsample) the draws of the guide's sites."""
    vae, x, _ = lg.make_two_layer(guide, exact=False, N=6)
    vae.num_data = 30  # a mini-batch of 6 out of 30: the N/B scale outside the per-example objective
    table, K, objective = ESTIMATOR_TABLES[estimator]
    index = torch.arange(6)
    if estimator == "tail_adaptive":  # full batches only
        vae.num_data, index = None, None
    pyro.set_rng_seed(3)
    loss = ESTIMATORS.build(table).loss(vae.model, vae.guide, x, index)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        z = vae.q(x).rsample((K,) if K > 1 else ())
    log_w = independent_log_weights(vae, guide, x.numpy(), z.reshape(K, 6, 2).numpy())
    scale = 1.0 if index is None else 30 / 6
    expected = -scale * objective(log_w).sum()
    assert loss == pytest.approx(expected, rel=1e-6), (loss, expected)


def test_trace_mean_field_is_refused_on_a_bottom_up_hierarchy(tmp_path):
    from helpers import run_cli

    data = tmp_path / "d.npz"
    np.savez(data, train=(np.random.default_rng(0).random((60, 8)) > 0.5).astype(np.float32))
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "run", "--set", "model.upper_layers=[{latent_dim=2}]",
                           "--set", "inference.estimator.kind=trace_mean_field", "--quiet")
    assert_one_line_error(code, err, "trace_mean_field", "bottom_up", "top_down")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("guide", ["top_down", "ladder"])
def test_the_analytic_kl_of_an_ordered_guide_matches_monte_carlo(guide):
    """trace_mean_field's closed-form KL of z1 against p(z1|z2), at the guide's z2, is an
    unbiased estimate of the ELBO where the guide draws z2 first: its mean over many
    particles equals Trace_ELBO's (Monte Carlo) within their standard errors."""
    vae, x, _ = lg.make_two_layer(guide, exact=False, N=4)
    vae.use_estimator(ESTIMATORS.build({"kind": "trace_mean_field"}), "trace_mean_field")  # allowed
    pyro.set_rng_seed(0)
    runs = {kind: np.array([ESTIMATORS.build({"kind": kind, "num_particles": 200, "vectorize_particles": True})
                            .loss(vae.model, vae.guide, x) for _ in range(20)]) for kind in ("trace_mean_field", "trace_elbo")}
    mf, mc = runs["trace_mean_field"], runs["trace_elbo"]
    se = math.sqrt(mf.var(ddof=1) / len(mf) + mc.var(ddof=1) / len(mc))
    assert abs(mf.mean() - mc.mean()) < 4 * se + 1e-9, (mf.mean(), mc.mean(), se)
