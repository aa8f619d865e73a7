"""Stacked stochastic layers (model/layers.py): a one-layer spec is the VAE from before
layers existed, to float rounding; a two-layer linear-Gaussian model, whose log p(x) and exact
posterior are closed forms, checks evaluation and the path-derivative estimators; every
estimator's loss on two layers against an independent computation at its own draws."""

import json
from pathlib import Path

import pytest

from one_layer_configs import CONFIGS, train_config, weight_moments

REFERENCE = json.loads((Path(__file__).parent / "data" / "one_layer_reference.json").read_text())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_one_layer_spec_trains_as_before_layers(name, tmp_path):
    # to float rounding, no longer bit for bit: one_layer_configs.py says why. gmvae-enum's
    # ELBOs were rewritten on 2026-12-07 (its encoder reads y through a split first map,
    # W_x x + W_y y, which tests/test_categorical.py checks against [x, y]; they moved by at
    # most 1.0e-6 nats)
    elbos, weights = train_config(name, tmp_path)
    assert elbos == pytest.approx(REFERENCE[name]["train_elbo"], rel=0, abs=2e-5)
    moments = weight_moments(weights)
    assert list(moments) == list(REFERENCE[name]["weight_moments"])
    for key, (total, squares) in moments.items():
        ref_total, ref_squares = REFERENCE[name]["weight_moments"][key]
        assert total == pytest.approx(ref_total, rel=1e-4, abs=1e-4 * (ref_squares ** 0.5 + 1e-3)), (key, total)
        assert squares == pytest.approx(ref_squares, rel=1e-4), (key, squares)


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


@pytest.mark.integration
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


# --- two layers through the library: compiled step, commands, spec errors ---------------

from helpers import run_cli  # noqa: E402
from pyro_vae.data import load_data  # noqa: E402
from pyro_vae.infer.compiled import CompiledStep  # noqa: E402
from pyro_vae.infer.train import Trainer  # noqa: E402
from pyro_vae.model import build_vae  # noqa: E402
from pyro_vae.model.likelihoods import LIKELIHOODS  # noqa: E402
from pyro_vae.spec import Spec  # noqa: E402
from one_layer_configs import SMALL, write_data  # noqa: E402

TWO_LAYERS = {"latent_dim": 3, "encoder": SMALL, "decoder": SMALL,
              "upper_layers": [{"latent_dim": 2, "encoder": SMALL, "prior_network": SMALL}]}


def _two_layer_run(folder, guide, estimator, compile=False, **model):
    spec = Spec.from_dict({
        "model": {**TWO_LAYERS, "inference_network": guide, **model},
        "inference": {"estimator": estimator, "schedule": {"epochs": 2, "batch_size": 50, "compile": compile}},
        "data": {"path": str(write_data(folder))},
    })
    torch.manual_seed(0)
    data = load_data(spec.data, seed=0, likelihood=LIKELIHOODS.resolve(spec.model.likelihood["kind"]))
    vae = build_vae(spec.model, data.data_shape, num_data=len(data.splits["train"]))
    lines = []
    trainer = Trainer(vae, data, spec.inference, progress=False, log=lines.append)
    if compile:
        trainer.compiled = CompiledStep(vae, trainer.estimator, trainer.optim.params, compile)
    state = trainer.fit()
    return trainer, [row["train_elbo"] for row in state.history], vae.state_dict(), lines


@pytest.mark.parametrize("guide, estimator", [
    ("bottom_up", {"kind": "trace_elbo"}), ("top_down", {"kind": "iwae", "k": 3}),
    ("ladder", {"kind": "iwae_dreg", "k": 3}), ("ladder", {"kind": "stl", "k": 2}),
    ("top_down", {"kind": "trace_mean_field"}),
])
def test_the_compiled_two_layer_step_equals_the_eager_step(guide, estimator, tmp_path):
    _, eager_elbo, eager, _ = _two_layer_run(tmp_path, guide, estimator)
    trainer, compiled_elbo, compiled, lines = _two_layer_run(tmp_path, guide, estimator, compile="graph")
    assert trainer.compiled is not None and not [line for line in lines if "compile" in line], lines
    for name, value in eager.items():
        assert torch.equal(value, compiled[name]), name
    assert compiled_elbo == pytest.approx(eager_elbo, rel=1e-6)


def test_two_layers_vamp_on_top_trains_and_its_prior_is_the_top_posterior_mixture(tmp_path):
    trainer, elbo, _, _ = _two_layer_run(tmp_path, "top_down", {"kind": "trace_elbo"},
                                         prior={"kind": "vamp", "components": 4}, decoder_reads="all")
    vae = trainer.vae
    assert all(math.isfinite(e) for e in elbo)
    z2 = torch.randn(7, 2)
    u = vae.prior.inputs()
    expected = torch.logsumexp(vae.upper[-1].posterior(vae.upper[-1].encoder(u)).log_prob(z2.unsqueeze(-2)), -1) - math.log(4)
    assert torch.allclose(vae.prior().log_prob(z2), expected, atol=1e-5)
    assert vae.decoder.in_shape == (5,)  # the decoder reads z1 and z2


@pytest.mark.integration
@pytest.mark.parametrize("change, fragments", [
    ({"inference_network": "ladder", "posterior": {"kind": "iaf"}}, ["ladder", "diagonal_normal"]),
    ({"prior": {"kind": "vamp"}}, ["vamp", "bottom_up", "top_down"]),
    ({"discrete": {"classes": 3}}, ["upper_layers", "encoder_reads_y = false"]),
])
def test_structures_that_cannot_work_are_refused_in_one_line(change, fragments, tmp_path):
    data = write_data(tmp_path)
    spec = tmp_path / "spec.toml"
    model = {**TWO_LAYERS, **change}
    import tomli_w

    spec.write_text(tomli_w.dumps({"model": model, "data": {"path": str(data)}}))
    code, _, err = run_cli("train", "--spec", spec, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(code, err, *fragments)


@pytest.mark.integration
def test_a_bad_layer_key_names_its_place(tmp_path):
    code, _, err = run_cli("train", "--model", "hvae", "--data", write_data(tmp_path), "--out", tmp_path / "run",
                           "--set", "model.upper_layers=[{latent_dim=2, widht=3}]", "--quiet")
    assert_one_line_error(code, err, "upper_layers", "widht")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["hvae", "hvae_vampprior", "ladder"])
def test_the_shipped_hierarchies_are_listed_and_build(name):
    code, out, _ = run_cli("specs")
    assert code == 0 and name in out
    spec = Spec.from_dict({"model": __import__("tomllib").loads(
        (Path(__file__).resolve().parents[1] / "models" / f"{name}.toml").read_text())["model"]})
    vae = build_vae(spec.model, (784,))
    assert vae.layers == 2 and len(vae.site_names) == 2


@pytest.mark.integration
def test_train_evaluate_analyze_encode_sample_on_two_layers(tmp_path):
    anndata = pytest.importorskip("anndata")
    from sklearn.datasets import load_digits

    x = (load_digits().data[:240] / 16 > 0.5).astype(np.float32)
    h5ad = tmp_path / "cells.h5ad"
    anndata.AnnData(X=x).write_h5ad(h5ad)
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--model", "ladder", "--data", h5ad, "--out", run, "--set", "inference.schedule.epochs=2",
                           "--set", "model.latent_dim=4", "--set", "model.upper_layers=[{latent_dim=3}]", "--quiet")
    assert code == 0, err
    code, out, err = run_cli("evaluate", run, "--samples", "20")
    assert code == 0, err
    summary = json.loads((run / "evaluation" / "valid.json").read_text())
    assert summary["layer_dims"] == [4, 3] and len(summary["active_units_per_layer"]) == 2
    assert sum(summary["active_units_per_layer"]) == summary["active_units"]
    assert "z1 " in out and "of 4" in out and "z2 " in out and "of 3" in out
    code, _, err = run_cli("analyze", run, "--samples", "30")
    assert code == 0, err
    az = pytest.importorskip("arviz")
    posterior = az.from_netcdf(run / "analysis" / "posterior.nc").posterior
    assert posterior["z1"].shape[-1] == 4 and posterior["z2"].shape[-1] == 3
    assert np.array_equal(posterior["z2"].values, posterior["z"].values[..., 4:])
    report = (run / "analysis" / "report.md").read_text()
    for name in ("latent_space_layer_z1", "latent_space_layer_z2", "traversals_layer_z1", "traversals_layer_z2"):
        assert (run / "analysis" / f"{name}.png").stat().st_size > 0 and f"{name}.png" in report
    code, _, err = run_cli("encode", run, "--out", tmp_path / "codes.h5ad")
    assert code == 0, err
    codes = anndata.read_h5ad(tmp_path / "codes.h5ad")
    assert codes.obsm["X_pyro_vae_z1"].shape == (240, 4) and codes.obsm["X_pyro_vae_z2_std"].shape == (240, 3)
    assert np.array_equal(codes.obsm["X_pyro_vae_z2"], codes.obsm["X_pyro_vae"][:, 4:])
    code, _, err = run_cli("sample", run, "--n", "5")
    assert code == 0, err
    samples = np.load(run / "samples" / "samples.npz")
    assert samples["z"].shape == (5, 7) and samples["mean"].shape[0] == 5


def test_each_layers_figures_take_its_own_most_active_dimensions_and_name_them_by_layer():
    from pyro_vae.workflows.analyze import most_active_by_layer

    vae, _, _ = lg.make_two_layer("top_down")
    assert vae.latent_labels == ["z1[0]", "z2[0]"]
    spec = Spec.from_dict({"model": {"latent_dim": 3, "upper_layers": [{"latent_dim": 2}]}}).model
    vae = build_vae(spec, (5,))
    assert vae.latent_labels == ["z1[0]", "z1[1]", "z1[2]", "z2[0]", "z2[1]"]
    variances = np.array([0.1, 0.9, 0.5, 0.2, 3.0])
    assert most_active_by_layer(vae, variances) == {"z1": [1, 2, 0], "z2": [4, 3]}


def test_a_traversal_of_an_upper_layer_moves_the_layers_below_to_their_conditional_means():
    vae, _, _ = lg.make_two_layer("top_down")  # p(z1|z2) = N(1.2 z2 + 0.3, 0.7^2)
    z = torch.tensor([[5.0, -1.0], [5.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(vae.descended(z, 1), torch.tensor([[1.2 * -1.0 + 0.3, -1.0], [1.2 * 2.0 + 0.3, 2.0]],
                                                            dtype=torch.float64))
    assert torch.equal(vae.descended(z, 0), z)  # the bottom layer's own move leaves the others


@pytest.mark.parametrize("guide", GUIDES)
def test_three_layers_pyro_sites_and_the_joint_vector_agree(guide):
    """With three layers, the guide's and the model's Pyro sites score what the joint q(z|x),
    p(z) and p(x|z) over the concatenated vector score (the two views evaluation and
    training take), and the draws come in the guide's order."""
    three = {**TWO_LAYERS, "inference_network": guide, "decoder_reads": "all",
             "upper_layers": [{"latent_dim": 2, "encoder": SMALL, "prior_network": SMALL},
                              {"latent_dim": 4, "encoder": SMALL, "prior_network": SMALL}]}
    torch.manual_seed(0)
    vae = build_vae(Spec.from_dict({"model": three}).model, (10,)).double()
    assert vae.layer_dims == [3, 4, 2] and vae.site_names == ["z1", "z2", "z3"]
    x = torch.rand(6, 10, dtype=torch.float64).round()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    order = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert order == (["z1", "z2", "z3"] if guide == "bottom_up" else ["z3", "z2", "z1"])
    z = torch.cat([guide_trace.nodes[n]["value"] for n in vae.site_names], -1)
    log_q = sum(guide_trace.nodes[n]["fn"].log_prob(guide_trace.nodes[n]["value"]) for n in order)
    assert torch.allclose(vae.q(x).log_prob(z), log_q, atol=1e-10)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    log_p = {n: model_trace.nodes[n]["fn"].log_prob(model_trace.nodes[n]["value"]) for n in [*vae.site_names, "x"]}
    assert torch.allclose(vae.latent_prior().log_prob(z), sum(log_p[n] for n in vae.site_names), atol=1e-10)
    assert torch.allclose(vae.p_x(z, x).log_prob(x), log_p["x"], atol=1e-10)
    samples = vae.latent_prior().sample((5,))
    assert samples.shape == (5, 9) and torch.isfinite(vae.latent_prior().log_prob(samples)).all()


@pytest.mark.integration
def test_compare_sets_the_ladder_beside_bottom_up_with_active_units_per_layer(tmp_path):
    import csv

    data = write_data(tmp_path)
    code, out, err = run_cli("compare", "--model", "ladder", "--data", data, "--set", "model.latent_dim=4",
                             "--set", "model.encoder.hidden=[16]", "--set", "model.decoder.hidden=[16]",
                             "--set", "model.upper_layers=[{latent_dim=2, encoder={kind=\"mlp\", hidden=[8]}, "
                                      "prior_network={kind=\"mlp\", hidden=[8]}}]",
                             "--set", "inference.schedule.epochs=1", "--vary", "model.inference_network=bottom_up,ladder",
                             "--seeds", "1", "--samples", "10", "--out", tmp_path / "cmp")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "comparison.csv")))
    assert [row["model.inference_network"] for row in rows] == ["bottom_up", "ladder"]
    for row in rows:
        assert " of 6: z1 " in row["active_units_by_layer"] and " of 4, z2 " in row["active_units_by_layer"]
        assert row["active_units_by_layer"].startswith(row["active_units"] + " of 6")


def test_set_and_vary_reach_into_a_layer_by_its_index():
    from pyro_vae.spec import load_spec
    from pyro_vae.workflows.cells import parse_axis

    spec = load_spec(model="hvae", overrides=["model.upper_layers.0.posterior.kind=iaf", "model.upper_layers.0.latent_dim=7"])
    layer = spec.model.upper_layers[0]
    assert layer.posterior["kind"] == "iaf" and layer.posterior["steps"] == 2 and layer.latent_dim == 7
    assert layer.encoder["hidden"] == [100, 100]  # the rest of the layer as the file has it
    assert load_spec(model="hvae", overrides=["model.upper_layers=[]"]).model.upper_layers == []
    for override, fragment in (("model.upper_layers.3.latent_dim=7", "holds 1 tables; index them 0 to 0"),
                               ("model.upper_layers.0.latent_dim=7", "model.upper_layers")):
        with pytest.raises(Exception, match=fragment):
            load_spec(model="hvae" if "3" in override else "bernoulli_mlp", overrides=[override])
    axis = parse_axis('model.upper_layers=[],[{latent_dim=4}]')  # the number of layers as an axis of compare
    assert axis.values == ("[]", "[{latent_dim=4}]")


@pytest.mark.integration
def test_encode_annotates_an_h5ad_without_obs(tmp_path):
    """An .h5ad without obs loads (data/readers.py reads obs only for labels or a split
    column); encode's annotated copy takes its rows from X then."""
    anndata = pytest.importorskip("anndata")
    import h5py

    x = (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.float32)
    path = tmp_path / "cells.h5ad"
    anndata.AnnData(X=x).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        del f["obs"]
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--model", "bernoulli_mlp", "--data", path, "--out", run, "--set", "inference.schedule.epochs=1",
                           "--quiet")
    assert code == 0, err
    code, _, err = run_cli("encode", run, "--out", tmp_path / "codes.h5ad")
    assert code == 0, err
    with h5py.File(tmp_path / "codes.h5ad", "r") as f:
        assert f["obsm"]["X_pyro_vae"].shape == (40, 16)


def test_a_two_layer_evaluation_builds_the_vampprior_once_however_many_chunks():
    """The VampPrior on top runs the encoder on its pseudo-inputs to build p(z_2): the joint
    prior builds it once, not on every chunk's log_prob (a K = 5000 evaluation of the
    VampPrior HVAE spent its time there, ~100 rebuilds per example)."""
    from pyro_vae.infer.evaluate import importance_sample

    model = {"latent_dim": 3, "encoder": {"kind": "mlp", "hidden": [8]}, "decoder": {"kind": "mlp", "hidden": [8]},
             "prior": {"kind": "vamp", "components": 4},
             "upper_layers": [{"latent_dim": 2}], "inference_network": "top_down"}
    vae = build_vae(Spec.from_dict({"model": model}).model, (6,))
    builds = []
    original = type(vae.prior).forward
    vae.prior.forward = lambda *args: builds.append(1) or original(vae.prior, *args)
    x = torch.rand(5, 6).bernoulli()
    result = importance_sample(vae, x, num_samples=40, budget=200)  # many chunks per example
    assert len(builds) == 1 and torch.isfinite(result.log_likelihood).all()
