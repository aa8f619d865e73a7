"""Discrete latents (model/categorical.py): every estimator against the ELBO summed over y by
hand, log p(x) against quadrature, the semi-supervised objective, and bad combinations."""

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
from pyro import poutine
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_one_line_error
from pyro_vae.infer.estimators import ESTIMATORS, PartwiseLoss
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.infer.metrics import classification_summary
from pyro_vae.model import build_vae
from pyro_vae.spec import ModelSpec

SHAPES = ["mixture", "m2"]
C, D, FEATURES = 3, 2, 4


def small_vae(shape, latent_dim=D, num_data=None, posterior="diagonal_normal", seed=0, reads_y=True):
    torch.manual_seed(seed)
    spec = ModelSpec(
        latent_dim=latent_dim,
        likelihood={"kind": "gaussian", "scale": "fixed", "initial_scale": 0.7},
        posterior={"kind": posterior},
        encoder={"kind": "mlp", "hidden": [8]},
        decoder={"kind": "mlp", "hidden": [8], "activation": "tanh"},
        discrete={"classes": C, "shape": shape, "classifier": {"kind": "mlp", "hidden": [8]}, "encoder_reads_y": reads_y},
    )
    vae = build_vae(spec, (FEATURES,), num_data=num_data)
    with torch.no_grad():  # a classifier far from uniform, so that errors in its terms show
        vae.classifier.net[-1].bias.copy_(torch.tensor([1.0, -0.5, 0.2]))
    return vae


def data(n=6, seed=1):
    return torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed))


def hand_elbo(vae, x, index, num_data):
    """The mini-batch ELBO estimate with y summed by hand, z_y drawn as TraceEnum_ELBO draws
    them (one (C, B) draw from q(z|x, y)), plus the labelled examples' terms."""
    u = vae.encoder_input(x)
    log_qy = torch.log_softmax(vae.classifier(u), -1)  # (B, C)
    log_py = torch.log_softmax(vae.class_logits, -1)
    eye = torch.eye(C).unsqueeze(1)  # (C, 1, C)
    q = vae.q_z(u, eye)  # batch (C, B)
    z = q.rsample()
    per_y = vae.p_x_given(z, eye, x).log_prob(x) + log_py.unsqueeze(-1) + vae.p_z(eye).log_prob(z) - q.log_prob(z)
    per_example = (log_qy.exp().T * (per_y - log_qy.T)).sum(0)  # (B,)
    if vae.is_labelled is not None:
        per_example = per_example * ~vae.is_labelled[index]
    total = num_data / len(x) * per_example.sum()
    if vae.labelled_x is not None:
        xl, yl = vae.labelled_x, vae.labelled_y
        ul, y = vae.encoder_input(xl), F.one_hot(yl, C).float()
        ql = vae.q_z(ul, y)
        zl = ql.rsample()
        log_q_label = torch.log_softmax(vae.classifier(ul), -1).gather(-1, yl[:, None]).squeeze(-1)
        total = total + (vae.p_x_given(zl, y, xl).log_prob(xl) + log_py[yl] + vae.p_z(y).log_prob(zl)
                         - ql.log_prob(zl) + vae.alpha / len(xl) * log_q_label).sum()
    return total


GUIDES = [True, False]  # q(y|x) q(z|x, y), and q(y|x) q(z|x) (model.discrete.encoder_reads_y)


@pytest.mark.parametrize("reads_y", GUIDES)
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_enumeration_equals_the_hand_summed_elbo_and_its_gradient(shape, labelled, reads_y):
    N = 20
    vae = small_vae(shape, num_data=N, reads_y=reads_y)
    x, index = data(), torch.tensor([0, 3, 5, 7, 11, 19])
    if labelled:  # rows 3 and 11 of the batch's examples are labelled, with 2 more outside it
        rows = torch.tensor([3, 11, 12, 15])
        vae.supervise(data(4, seed=2), torch.tensor([0, 2, 1, 2]), rows, alpha=5.0, batch=4)
    estimator = ESTIMATORS.build({"kind": "trace_enum"})
    vae.use_estimator(estimator, "trace_enum")
    params = list(vae.parameters())
    torch.manual_seed(7)
    loss = estimator.differentiable_loss(vae.model, vae.guide, x, index)
    ours = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(7)
    expected = -hand_elbo(vae, x, index, N)
    theirs = torch.autograd.grad(expected, params, allow_unused=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum())
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def exact_elbo(vae, x, draws=4000):
    """The ELBO summed over y, with E over z from many reparameterized draws (common across
    calls with the same seed), as a differentiable function of all parameters."""
    torch.manual_seed(123)
    u = vae.encoder_input(x)
    log_qy = torch.log_softmax(vae.classifier(u), -1)
    eye = torch.eye(C).unsqueeze(1)
    q = vae.q_z(u, eye)
    z = q.rsample((draws,))  # (S, C, B, D)
    log_py = torch.log_softmax(vae.class_logits, -1).unsqueeze(-1)
    per_y = (vae.p_x_given(z, eye, x).log_prob(x) + vae.p_z(eye).log_prob(z) - q.log_prob(z)).mean(0) + log_py
    return (log_qy.exp().T * (per_y - log_qy.T)).sum()


def gradient_draws(vae, estimator, x, kind, draws, temperature=None):
    """Per-draw gradients of the classifier's output bias, (draws, C)."""
    vae.use_estimator(estimator, kind)
    if temperature is not None:
        vae.temperature = temperature
    bias = vae.classifier.net[-1].bias
    out = []
    torch.manual_seed(11)
    for _ in range(draws):
        vae.zero_grad(set_to_none=True)
        estimator.loss_and_grads(vae.model, vae.guide, x)
        out.append(bias.grad.clone())
    return -torch.stack(out)


@pytest.mark.parametrize("shape", ["mixture", pytest.param("m2", marks=pytest.mark.slow)])
def test_score_function_gradients_of_q_y_are_unbiased_against_the_exact_sum(shape):
    vae = small_vae(shape)
    x = data(3)
    bias = vae.classifier.net[-1].bias
    exact = torch.autograd.grad(exact_elbo(vae, x), bias)[0]
    for kind in ("trace_elbo", "trace_graph", "trace_enum"):
        pyro.clear_param_store()
        spec = {"kind": kind, **({"baseline": "none"} if kind == "trace_graph" else {})}
        g = gradient_draws(vae, ESTIMATORS.build(spec), x, kind, 800)
        se = g.std(0) / math.sqrt(len(g))
        assert ((g.mean(0) - exact).abs() < 4.5 * se + 2e-3).all(), (kind, g.mean(0), exact, se)


def test_baselines_and_enumeration_reduce_the_variance_of_q_y_gradients():
    """The point of the estimator comparison: the variance of q(y|x)'s gradient falls from the
    plain score function to Rao-Blackwellization with a baseline to the exact sum."""
    vae = small_vae("mixture", num_data=40)
    x = data(8)
    variance = {}
    # The variances are far apart (measured over 300 draws: 2887, 160 and 16.4, ratios 0.055 and
    # 0.10): over the 100 draws after the warm-up, the bootstrap puts each log-ratio 11 sd
    # (enum/graph) and 17 sd (graph/elbo) from 0, a false failure below 1e-29 (at 300 draws: 20
    # and 30 sd), and the test takes half the time.
    for spec in ({"kind": "trace_elbo"}, {"kind": "trace_graph"}, {"kind": "trace_enum"}):
        pyro.clear_param_store()
        g = gradient_draws(vae, ESTIMATORS.build(spec), x, spec["kind"], 200)
        variance[spec["kind"]] = g[100:].var(0).sum().item()  # after the average baseline has settled
    assert variance["trace_enum"] < variance["trace_graph"] < variance["trace_elbo"], variance


def test_the_gradient_probe_leaves_trace_graph_average_baselines_as_it_found_them():
    """The SNR probe's repeated estimates move TraceGraph_ELBO's decaying-average baselines
    in Pyro's param store; it puts them back bit for bit (mid-training), and removes those it
    created (before the first step), so training continues as without the probe."""
    from pyro_vae.infer.gradients import gradient_snr
    from pyro_vae.infer.pyro_internals import BASELINE_PREFIX as BASELINE_PARAMS

    vae = small_vae("mixture", num_data=40)
    x, index = data(8), torch.arange(8)
    estimator = ESTIMATORS.build({"kind": "trace_graph"})
    vae.use_estimator(estimator, "trace_graph")
    pyro.clear_param_store()
    gradient_snr(vae, estimator, x, index, 4)  # before any step: nothing to keep
    assert not [k for k in pyro.get_param_store().keys() if k.startswith(BASELINE_PARAMS)]
    estimator.loss_and_grads(vae.model, vae.guide, x, index)  # a training step's estimate: the baselines exist
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items() if k.startswith(BASELINE_PARAMS)}
    assert before and all(v.abs().sum() > 0 for v in before.values())
    # one average per batch position, as the README says, not one per training example (num_data = 40)
    assert all(v.shape == (len(x),) for v in before.values())
    assert "kept per batch position rather than per example" in (Path(__file__).parents[1] / "docs" / "guides" / "specs.md").read_text()
    gradient_snr(vae, estimator, x, index, 4)
    after = {k: v.detach() for k, v in pyro.get_param_store().items() if k.startswith(BASELINE_PARAMS)}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    pyro.clear_param_store()


def test_relaxed_estimator_is_biased_as_its_temperature_says():
    """The relaxed objective tends to the exact ELBO as tau -> 0: its expected loss is within
    Monte Carlo error of the exact ELBO at tau = 0.02 and clearly off at tau = 3; the same for
    its gradient of q(y|x)'s logits."""
    vae = small_vae("m2")
    x = data(3)
    bias = vae.classifier.net[-1].bias
    exact_value = exact_elbo(vae, x)
    exact_grad = torch.autograd.grad(exact_value, bias)[0]
    errors = {}
    for tau in (0.02, 3.0):
        estimator = ESTIMATORS.build({"kind": "relaxed", "initial_temperature": tau, "final_temperature": tau})
        vae.use_estimator(estimator, "relaxed")
        vae.temperature = tau
        torch.manual_seed(5)
        values = torch.tensor([-estimator.loss(vae.model, vae.guide, x) for _ in range(2000)])
        g = gradient_draws(vae, estimator, x, "relaxed", 800, tau)
        errors[tau] = ((values.mean() - exact_value).abs().item(), (values.std() / math.sqrt(len(values))).item(),
                       (g.mean(0) - exact_grad).norm().item(), (g.std(0) / math.sqrt(len(g))).norm().item())
    value_error, value_se, grad_error, grad_se = errors[0.02]
    assert value_error < 4 * value_se + 1e-3 and grad_error < 4 * grad_se, errors
    hot_value_error, hot_value_se, hot_grad_error, hot_grad_se = errors[3.0]
    assert hot_value_error > 6 * hot_value_se, errors
    assert hot_grad_error > 3 * hot_grad_se and hot_grad_error > 2 * grad_error, errors


@pytest.mark.parametrize("reads_y", GUIDES)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_px_summed_over_y_matches_quadrature(shape, reads_y):
    """log p(x) = log sum_y p(y) int p(z|y) p(x|y, z) dz on a grid (one latent dimension),
    against importance sampling with the exact sum over y."""
    vae = small_vae(shape, latent_dim=1, reads_y=reads_y)
    x = data(5)
    with torch.no_grad():  # q(z|x, y) of sd 2, wider than p(z|x, y): bounded weights, so that IS error is small
        last = vae.encoder.net[-1]
        last.weight[1:].zero_()
        last.bias[1:] = math.log(math.expm1(2.0))  # softplus^-1(2)
        grid = torch.linspace(-12, 12, 24001, dtype=torch.float64).unsqueeze(-1)
        vae_d = vae.double()
        log_terms = []
        for c in range(C):
            y = F.one_hot(torch.tensor(c), C).double()
            z = grid.unsqueeze(1)  # (G, 1, 1)
            lp = vae_d.p_x_given(z, y, x.double()).log_prob(x.double()) + vae_d.p_z(y).log_prob(z)  # (G, B)
            log_terms.append(torch.logsumexp(lp, 0) + math.log(grid[1, 0] - grid[0, 0]) - math.log(C))
        exact = torch.logsumexp(torch.stack(log_terms), 0)
        estimate = importance_sample(vae_d, x.double(), 20000)
        vae.float()
    torch.testing.assert_close(estimate.log_likelihood, exact, atol=0.02, rtol=0)
    assert (estimate.elbo <= estimate.log_likelihood + 1e-6).all()


def test_marginal_views_agree_with_the_sum_over_classes():
    """q(x) and p_x are the marginals over y: their densities equal the explicit sums."""
    for shape, reads_y in [(shape, reads_y) for shape in SHAPES for reads_y in GUIDES]:
        vae = small_vae(shape, reads_y=reads_y)
        x = data(4)
        with torch.no_grad():
            z = torch.randn(7, 4, D)
            u = vae.encoder_input(x)
            log_qy = torch.log_softmax(vae.classifier(u), -1)
            eye = torch.eye(C)
            joint = [log_qy[:, c] + vae.q_z(u, eye[c].expand(4, C)).log_prob(z) for c in range(C)]
            torch.testing.assert_close(vae.q(x).log_prob(z), torch.logsumexp(torch.stack(joint), 0))
            lik = [vae.p_x_given(z, eye[c].expand(7, 4, C), x).log_prob(x) - math.log(C) for c in range(C)]
            torch.testing.assert_close(vae.p_x(z, x).log_prob(x), torch.logsumexp(torch.stack(lik), 0))


def test_classification_summary_against_known_answers():
    probs = torch.eye(3)[[1, 1, 2, 0, 0, 2]]  # clusters permuted from the labels
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    summary = classification_summary(probs, labels)
    assert summary["accuracy"] == 0
    assert summary["cluster_accuracy"] == 1
    assert summary["nmi"] == pytest.approx(1.0)
    assert summary["confusion"][1][0] == 2
    assert summary["confusion"] == [[0, 0, 2], [2, 0, 0], [0, 2, 0]]  # [predicted y][label], counted by hand
    # more labels than classes, a class never predicted: the matrix is classes x labels
    summary = classification_summary(torch.eye(2)[[0, 0, 0, 1]], torch.tensor([0, 1, 2, 2]))
    assert summary["confusion"] == [[1, 1, 1], [0, 0, 1]] and summary["cluster_accuracy"] == 0.5


def test_a_discrete_model_defaults_to_enumeration():
    from pyro_vae.spec import load_spec

    assert load_spec(model="gmvae").inference.estimator["kind"] == "trace_enum"
    assert load_spec(model="gmvae", inference="trace_graph").inference.estimator["kind"] == "trace_graph"
    assert load_spec().inference.estimator["kind"] == "trace_elbo"


@pytest.mark.integration
def test_analyze_gives_q_y_and_the_discrete_figures(tmp_path):
    """analyze on a semi-supervised run: q(y|x) in posterior.nc (obs x y, rows summing to 1),
    the class-conditional samples, the confusion matrix (its counts those of the labels) and
    the latent space by predicted y; the report links them."""
    import arviz as az
    import json

    from pyro_vae.cli import main

    run = tmp_path / "m2"
    assert main(["train", "--model", "m2_semisupervised", "--set", "data.labelled=50", "--set",
                 "inference.schedule.epochs=2", "--quiet", "--out", str(run)]) == 0
    assert main(["analyze", str(run), "--samples", "20", "--limit", "60"]) == 0
    folder = run / "analysis"
    q_y = az.from_netcdf(folder / "posterior.nc").posterior["q_y"]
    assert q_y.dims == ("obs", "y") and q_y.shape == (60, 10)
    np.testing.assert_allclose(q_y.values.sum(-1), 1, rtol=1e-5)
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    assert np.asarray(diagnostics["confusion"]).sum() == 60
    for name in ("class_samples.png", "confusion.png", "latent_space_predicted.png"):
        assert (folder / name).stat().st_size > 5000
        assert name in (folder / "report.md").read_text()

    # encode writes q(y|x) beside the marginal's mean: checked against the loaded run's classifier
    import csv

    import torch

    from pyro_vae.workflows.evaluate import heldout
    from pyro_vae.runs import load_run

    assert main(["encode", str(run), "--split", "test", "--out", str(tmp_path / "codes.npz")]) == 0
    assert main(["encode", str(run), "--split", "test", "--out", str(tmp_path / "codes.csv")]) == 0
    codes = np.load(tmp_path / "codes.npz")
    loaded = load_run(run, "cpu")
    vae, x = loaded.vae, heldout(loaded, None, "test", None, 0, torch.device("cpu")).x
    with torch.no_grad():
        q_y = torch.softmax(vae.q_y_logits(x), -1)
        mean = (q_y.unsqueeze(-1) * vae.q_z(vae.encoder_input(x).unsqueeze(1), torch.eye(10)).mean).sum(1)
    np.testing.assert_allclose(codes["q_y"], q_y.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(codes["mean"], mean.numpy(), rtol=1e-4, atol=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "codes.csv")))
    assert len(rows) == len(x)
    np.testing.assert_allclose([float(rows[3][f"q_y_{c}"]) for c in range(10)], q_y[3].numpy(), rtol=1e-5)


def test_labelled_rows_are_balanced_and_seeded():
    from pyro_vae.data import labelled_rows

    labels = torch.arange(100) % 4
    rows = labelled_rows(labels, 10, seed=3, source="t")
    counts = torch.bincount(labels[rows], minlength=4)
    assert sorted(counts.tolist()) == [2, 2, 3, 3]
    assert torch.equal(rows, labelled_rows(labels, 10, seed=3, source="t"))
    assert not torch.equal(rows, labelled_rows(labels, 10, seed=4, source="t"))


BAD = [
    (["--model", "gmvae", "--inference", "iwae_k5"], "cannot handle model.discrete"),
    (["--model", "m2_semisupervised", "--inference", "dreg_k5"], "cannot handle model.discrete"),
    (["--model", "gmvae", "--set", "model.prior.kind=vamp"], "model.prior"),
    (["--model", "m2_semisupervised", "--set", "model.prior.kind=vamp"], "vamp"),
    (["--model", "m2_semisupervised", "--set", "model.encoder.kind=conv"], "encoder_reads_y = false"),
    (["--model", "m2_semisupervised", "--set", "data.labelled=5000"], "more than the"),
    (["--model", "m2_semisupervised", "--set", "data.labelled=100", "--set", "model.discrete.classes=5"], "classes"),
    (["--set", "data.labelled=100"], "[model.discrete]"),
    (["--inference", "relaxed"], "has none"),
    (["--model", "gmvae", "--inference", "jit_trace_elbo", "--set", "inference.schedule.kl_warmup_epochs=0"], "jit = true cannot"),
]


@pytest.mark.integration
@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_discrete_combinations_exit_2_with_one_line(tmp_path, capsys, args, fragment):
    from pyro_vae.cli import main

    out = tmp_path / "run"
    code = main(["train", *args, "--set", "inference.schedule.epochs=1", "--quiet", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, fragment)
    assert not out.exists()


@pytest.mark.integration
def test_a_streamed_semi_supervised_run_equals_the_in_memory_one(tmp_path):
    """data.in_memory = false with data.labelled: the labelled examples are read from the
    memory-mapped file, and the weights after two epochs are those of the in-memory run."""
    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    rng = np.random.default_rng(0)
    x, y = rng.random((300, 6)).astype(np.float32), rng.integers(0, 3, 300)
    np.savez(tmp_path / "d.npz", train=x[:250], train_labels=y[:250], valid=x[250:], valid_labels=y[250:])
    weights = {}
    for in_memory in ("true", "false"):
        out = tmp_path / in_memory
        assert main(["train", "--model", "m2_semisupervised", "--set", f"data.path={tmp_path / 'd.npz'}", "--set",
                     f"data.in_memory={in_memory}", "--set", "data.labelled=30", "--set", "model.discrete.classes=3",
                     "--set", "inference.schedule.epochs=2", "--quiet", "--out", str(out)]) == 0
        weights[in_memory] = load_run(out).vae.state_dict()
    for key, value in weights["true"].items():
        torch.testing.assert_close(value, weights["false"][key], rtol=0, atol=0, msg=key)


@pytest.mark.integration
def test_labelled_on_data_without_labels_exits_2(tmp_path, capsys):
    from pyro_vae.cli import main

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((200, 6)).astype(np.float32))
    code = main(["train", "--model", "m2_semisupervised", "--set", f"data.path={path}", "--set", "data.labelled=10",
                 "--quiet", "--out", str(tmp_path / "run")])
    assert_one_line_error(code, capsys.readouterr().err, "needs labels")


@pytest.mark.integration
@pytest.mark.parametrize("inference", ["trace_enum", "trace_graph_neural", "relaxed_straight_through",
                                       *(pytest.param(k, marks=pytest.mark.slow) for k in ("trace_graph", "trace_elbo", "relaxed"))])
def test_every_estimator_trains_resumes_exactly_and_evaluates(tmp_path, capsys, inference):
    """A semi-supervised M2 run killed after its first epoch and resumed ends with the
    weights of the uninterrupted run (baselines and the labelled draws included), and
    evaluate reports the accuracies."""
    import json

    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    common = ["--model", "m2_semisupervised", "--inference", inference, "--set", "data.labelled=50",
              "--set", "inference.schedule.batch_size=256", "--set", "model.discrete.labelled_batch=20", "--quiet"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", *common, "--set", "inference.schedule.epochs=2", "--out", str(whole)]) == 0
    assert main(["train", *common, "--set", "inference.schedule.epochs=1", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--set", "inference.schedule.epochs=2", "--quiet"]) == 0
    a, b = load_run(whole).vae.state_dict(), load_run(part).vae.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    capsys.readouterr()
    assert main(["evaluate", str(whole), "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((whole / "evaluation" / "valid.json").read_text())
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["nmi"] <= 1
    assert f"accuracy        {summary['accuracy']:.1%}" in printed, printed  # the terminal shows what the file holds
    assert f"clustering      {summary['cluster_accuracy']:.1%}" in printed and f"NMI             {summary['nmi']:.3f}" in printed
    assert summary["elbo"] <= summary["log_likelihood"] + 1


@pytest.mark.integration
def test_compare_reports_q_y_snr_and_accuracy_on_a_discrete_model(tmp_path, capsys):
    import csv

    from pyro_vae.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--model", "gmvae", "--estimators", "trace_enum,trace_elbo", "--seeds", "1", "--set",
                 "inference.schedule.epochs=1", "--samples", "4", "--limit", "50", "--snr-repeats", "20",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "SNR q(y|x)" in printed.out + printed.err
    rows = {r["cell"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    for row in rows.values():
        assert float(row["snr_classifier"]) > 0 and 0 <= float(row["accuracy"]) <= 1
    # the exact sum over y gives q(y|x) a cleaner gradient than the plain score function
    assert float(rows["trace_enum"]["snr_classifier"]) > float(rows["trace_elbo"]["snr_classifier"])


@pytest.mark.slow
def test_semi_supervised_m2_beats_the_supervised_only_classifier_on_digits(tmp_path):
    """Kingma et al.'s (2014) claim, on digits: M2 (the shipped spec) trained with 100 labels
    (10 per class) and the other 1337 training images unlabelled classifies the held-out
    images (valid and test, 360) better than the same classifier network fitted to the 100
    labelled images alone, by more than twice the paired standard error."""
    import torch

    from pyro_vae.infer.supervised import supervised_classifier
    from pyro_vae.workflows.train import train
    from pyro_vae.spec import load_spec

    spec = load_spec(model="m2_semisupervised", overrides=["data.labelled=100"])
    trainer = train(spec, tmp_path / "m2", progress=False, log=lambda _: None)
    vae, data = trainer.vae, trainer.data
    baseline = supervised_classifier(vae, spec.model.discrete.classifier, seed=0)
    x = torch.cat([data.split("valid"), data.split("test")])
    labels = torch.cat([data.labels["valid"], data.labels["test"]])
    with torch.no_grad():
        m2_right = (vae.q_y_logits(x).argmax(-1) == labels).double()
        baseline_right = (baseline(vae.encoder_input(x)).argmax(-1) == labels).double()
    gain = m2_right - baseline_right
    assert baseline_right.mean() > 0.8  # the baseline is a fair one
    assert gain.mean() > 2 * gain.std() / len(gain) ** 0.5, (m2_right.mean(), baseline_right.mean())


@pytest.mark.integration
def test_a_mixture_vae_whose_encoder_reads_x_alone_may_be_convolutional(tmp_path, capsys):
    """With encoder_reads_y = false the encoder sees x alone, so a conv encoder (refused when
    it must read one-hot y beside x) trains, and its q(z|x) is q(y|x)-free."""
    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    out = tmp_path / "run"
    code = main(["train", "--model", "gmvae", "--set", "model.discrete.encoder_reads_y=false", "--set", "model.encoder.kind=conv",
                 "--set", "model.encoder.channels=[4]",
                 "--set", "inference.schedule.epochs=1", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    vae = load_run(out).vae
    x = torch.rand(5, *vae.data_shape)
    with torch.no_grad():
        direct = vae.posterior(vae.encoder(vae.encoder_input(x)))
        torch.testing.assert_close(vae.q(x).mean, direct.mean)


@pytest.mark.integration
@pytest.mark.parametrize("seed", [0, 1])
def test_the_shipped_gmvae_clusters_digits_instead_of_collapsing(tmp_path, seed):
    """Regression: with its component means drawn from N(0, I) the mixture VAE put every
    example in one cluster (NMI 0 on digits and MNIST). The shipped gmvae, 60 epochs on
    digits, uses at least 9 of its 10 clusters on the validation images and has NMI above
    0.4 with their labels (0.60 and 0.56 measured; k-means on the pixels: about 0.7)."""
    from pyro_vae.spec import load_spec
    from pyro_vae.workflows.train import train

    # the digits divided by 16, as the shipped gmvae was measured: standardize = "auto" (the default since issue
    # 29) standardizes per feature for its Gaussian likelihood, and then it used 7 of the 10 clusters (NMI 0.50)
    spec = load_spec(model="gmvae", overrides=["inference.schedule.epochs=60", f"inference.schedule.seed={seed}",
                                               "data.standardize=false"])
    trainer = train(spec, tmp_path / "run", progress=False, log=lambda _: None)
    valid = trainer.data.split("valid")
    with torch.no_grad():
        q_y = torch.softmax(trainer.vae.q_y_logits(valid), -1)
    summary = classification_summary(q_y, trainer.data.labels["valid"])
    assert q_y.argmax(-1).unique().numel() >= 9 and summary["nmi"] > 0.4, summary


@pytest.mark.parametrize("reads_y", GUIDES)
def test_m2_with_library_sizes_scores_counts_as_scipy_does(reads_y):
    """M2 with a Poisson likelihood whose mean is l(x) * softmax(decoder(z, y)) (scVI's library
    size, l(x) the observed total): p(x|y, z) per class and the marginal sum_y p(y) p(x|y, z)
    against scipy's Poisson pmf, and the ELBO summed over y by TraceEnum_ELBO against the
    hand sum, at counts whose totals differ by 100x."""
    from scipy.stats import poisson

    torch.manual_seed(0)
    spec = ModelSpec(latent_dim=D, likelihood={"kind": "poisson", "library_size": True},
                     encoder={"kind": "mlp", "hidden": [8]}, decoder={"kind": "mlp", "hidden": [8]},
                     discrete={"classes": C, "shape": "m2", "classifier": {"kind": "mlp", "hidden": [8]},
                               "encoder_reads_y": reads_y})
    vae = build_vae(spec, (FEATURES,), num_data=20)
    x = torch.tensor([[0.0, 1, 2, 1], [50, 120, 30, 100], [3, 0, 0, 7]])
    z = torch.randn(5, 3, D)
    eye = torch.eye(C)
    with torch.no_grad():
        per_class = []
        for c in range(C):
            y = eye[c].expand(5, 3, C)
            raw = vae.decoder(torch.cat([z, y], -1))[..., 0, :]  # (5, 3, FEATURES): the one output per feature
            mean = x.sum(-1, keepdim=True) * torch.softmax(raw, -1) + 1e-8
            expected = poisson.logpmf(x.numpy(), mean.double().numpy()).sum(-1)
            np.testing.assert_allclose(vae.p_x_given(z, y, x).log_prob(x).numpy(), expected, rtol=1e-5)
            per_class.append(torch.as_tensor(expected) - math.log(C))
        np.testing.assert_allclose(vae.p_x(z, x).log_prob(x).numpy(), torch.logsumexp(torch.stack(per_class), 0).numpy(),
                                   rtol=1e-5)
    estimator = ESTIMATORS.build({"kind": "trace_enum"})
    vae.use_estimator(estimator, "trace_enum")
    index = torch.tensor([0, 4, 9])
    torch.manual_seed(7)
    loss = estimator.differentiable_loss(vae.model, vae.guide, x, index)
    torch.manual_seed(7)
    assert loss.item() == pytest.approx(-hand_elbo(vae, x, index, 20).item(), rel=1e-5)


# --- the learning signal of an unlabelled y holds its own example's terms only (issue 28) ---


def _classifier_gradient(vae, loss, x, index, seed=4):
    pyro.clear_param_store()
    for p in vae.parameters():
        p.grad = None
    pyro.set_rng_seed(seed)
    loss.loss_and_grads(vae.model, vae.guide, x, index)
    return torch.cat([p.grad.reshape(-1) for p in vae.classifier.parameters()])


def test_an_unlabelled_ys_score_signal_is_its_own_log_weight_not_the_labelled_sum():
    """Semi-supervised M2 under trace_elbo (y sampled, score function), alpha = 0 so that
    only unlabelled y reach the classifier: traced part by part (what the trainer does), the
    classifier's gradient is -(N/B) sum_i log w_i grad log q(y_i|x_i) (the score function of the
    scaled ELBO), log w_i example i's
    own log p(x_i, y_i, z_i) - log q(y_i, z_i|x_i); it does not change when the labelled
    examples do. Traced together (Pyro's Trace_ELBO on one model), the labelled plate's sum
    enters every signal and the gradient moves with it."""
    N, B = 40, 6
    vae = small_vae("m2", num_data=N)
    estimator = ESTIMATORS.build({"kind": "trace_elbo"})
    vae.use_estimator(estimator, "trace_elbo")
    x, index = data(B), torch.arange(10, 10 + B)
    labelled = data(4, seed=2)
    rows = torch.tensor([0, 1, 2, 3])

    def gradients(xl, loss_of):
        vae.supervise(xl, torch.tensor([0, 2, 1, 2]), rows, alpha=0.0, batch=4)
        return _classifier_gradient(vae, loss_of(estimator, vae.objective_parts), x, index)

    partwise = lambda e, parts: PartwiseLoss(e, parts)  # noqa: E731
    g1, g2 = gradients(labelled, partwise), gradients(labelled + 3.0, partwise)
    assert torch.equal(g1, g2)
    joint1, joint2 = gradients(labelled, lambda e, parts: e), gradients(labelled + 3.0, lambda e, parts: e)
    assert not torch.allclose(joint1, joint2)  # the defect the parts remove

    # the signal's content, independently: replay the guide's draws and score each example
    vae.supervise(labelled, torch.tensor([0, 2, 1, 2]), rows, alpha=0.0, batch=4)
    pyro.set_rng_seed(4)
    guide_trace = poutine.trace(vae.guide).get_trace(x, index, part="unlabelled")
    y, z = guide_trace.nodes["y"]["value"], guide_trace.nodes["z"]["value"]
    with torch.no_grad():
        u = vae.encoder_input(x)
        one_hot = vae.one_hot(y)
        log_w = (math.log(1 / C) + vae.prior().log_prob(z) + vae.p_x_given(z, one_hot, x).log_prob(x)
                 - dist.Categorical(logits=vae.classifier(u)).log_prob(y) - vae.q_z(u, one_hot).log_prob(z))
    for p in vae.parameters():
        p.grad = None
    surrogate = -(N / B) * (log_w * dist.Categorical(logits=vae.classifier(vae.encoder_input(x))).log_prob(y)).sum()
    surrogate.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in vae.classifier.parameters()])
    assert torch.allclose(g1, expected, rtol=1e-4, atol=1e-6), (g1, expected)


def test_enumerated_m2_traced_part_by_part_says_nothing_about_its_labelled_part(recwarn):
    """The labelled part observes y, so TraceEnum_ELBO has nothing to enumerate there and
    warned so on every training step (the reproduction script's M2 row printed it)."""
    vae = small_vae("m2", num_data=40)
    estimator = ESTIMATORS.build({"kind": "trace_enum"})
    vae.use_estimator(estimator, "trace_enum")
    vae.supervise(data(4, seed=2), torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1, 2, 3]), alpha=1.0, batch=4)
    loss = PartwiseLoss(estimator, vae.objective_parts)
    value = loss.loss(vae.model, vae.guide, data(), torch.arange(6))
    assert math.isfinite(value) and vae.objective_parts == ("unlabelled", "labelled")
    assert not [w for w in recwarn if "no sample sites configured for enumeration" in str(w.message)]


@pytest.mark.parametrize("kind, hidden", [("mlp", [7]), ("mlp", []), ("gated_mlp", [5, 4])])
def test_an_encoder_reading_y_beside_x_equals_it_reading_the_concatenation(kind, hidden):
    """M2's q(z|x, y): the split first map W_x x + W_y y (x once, y per class, broadcast) gives
    the network of [x, y] for every class, values and gradients, at the enumerated shape."""
    from pyro_vae.model.layers import concatenated
    from pyro_vae.model.networks import NETWORKS

    torch.manual_seed(0)
    net = NETWORKS.build({"kind": kind, "hidden": hidden}, (6 + 3,), (4,)).double()
    x, y = torch.rand(5, 6, dtype=torch.float64), torch.eye(3, dtype=torch.float64).unsqueeze(-2)  # (3, 1, 3)
    split = net(x, beside=y)
    joined = net(concatenated(x, y))
    assert split.shape == joined.shape == (3, 5, 4)
    assert torch.allclose(split, joined, atol=1e-12)
    weights = torch.randn_like(split)
    g_split = torch.autograd.grad((split * weights).sum(), list(net.parameters()))
    g_joined = torch.autograd.grad((joined * weights).sum(), list(net.parameters()))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_split, g_joined))
    with pytest.raises(ValueError, match="features beside"):
        net(x[:, :5], beside=y)


def test_the_m2_step_benchmark_runs_and_leaves_the_split_encoder_in_place():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "m2_step.py"
    spec = importlib.util.spec_from_file_location("m2_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from pyro_vae.model.vae import VAE

    before = VAE._encoded
    result = module.main(["--rounds", "1", "--steps", "2", "--train", "300"])
    assert VAE._encoded is before
    assert result["split"] > 0 and result["concatenated"] > 0 and result["ratio"] > 0


@pytest.mark.parametrize("encoder", [{"kind": "mlp", "hidden": [8]}, {"kind": "gated_mlp", "hidden": [5, 4]},
                                     {"kind": "user_components:DoubledInputMLP", "hidden": [8]}])
def test_m2s_q_z_and_marginal_q_are_the_encoders_own_forward_on_x_and_y_concatenated(encoder):
    """VAE.q_z and the marginal q(z|x) = sum_y q(y|x) q(z|x, y) against the encoder's own
    forward called on [x, y] by hand: the library's kinds read y through the split first map,
    a user's subclass of them keeps its forward (a split would skip it)."""
    torch.manual_seed(0)
    spec = ModelSpec(latent_dim=D, likelihood={"kind": "gaussian"}, encoder=encoder,
                     decoder={"kind": "mlp", "hidden": [8]},
                     discrete={"classes": C, "shape": "m2", "classifier": {"kind": "mlp", "hidden": [8]}})
    vae = build_vae(spec, (FEATURES,)).double().eval()
    x, eye = data().double(), torch.eye(C, dtype=torch.float64)
    joined = torch.cat([x.unsqueeze(-2).expand(-1, C, -1), eye.expand(len(x), -1, -1)], -1)  # (B, C, F + C)
    by_hand = vae.posterior(vae.encoder.forward(joined))
    z = torch.randn(len(x), D, dtype=torch.float64)
    assert torch.allclose(vae.q_z(x, eye.unsqueeze(1)).log_prob(z), by_hand.log_prob(z.unsqueeze(-2)).T, atol=1e-12)
    log_qy = torch.log_softmax(vae.classifier(x), -1)
    marginal = torch.logsumexp(log_qy + by_hand.log_prob(z.unsqueeze(-2)), -1)
    assert torch.allclose(vae.q(x).log_prob(z), marginal, atol=1e-12)
