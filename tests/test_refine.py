"""The semi-amortized proposal (pyro_vae.infer.refine): q(z|x) refined per example on its own
ELBO, checked against a linear-Gaussian model whose log p(x) and posterior are exact."""

import json

import numpy as np
import pytest
import torch

import linear_gaussian
from helpers import assert_one_line_error
from pyro_vae.analysis.inference_data import posterior_draws
from pyro_vae.cli import main
from pyro_vae.infer.evaluate import importance_sample, refined_proposals


def _estimates(vae, x, refine, samples=400):
    torch.manual_seed(0)
    result = importance_sample(vae, x, samples, refine=refine)
    torch.manual_seed(0)
    draws = posterior_draws(vae, x, samples, keep_draws=samples, refine=refine)
    return result, draws


def test_the_refined_proposal_estimates_the_exact_log_px_with_lower_khat_and_variance():
    # the encoder's q: the posterior's scales a tenth of the true ones, a poor proposal
    vae, x, exact = linear_gaussian.make(D=4, L=2, N=24, proposal="narrow")
    vae.eval()
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    amortized, amortized_draws = _estimates(vae, x, 0)
    refined, refined_draws = _estimates(vae, x, 300)
    for name, p in vae.named_parameters():  # the model is held fixed, its gradients untouched
        assert torch.equal(p, before[name]) and p.grad is None, name
    error = refined.log_likelihood.numpy() - exact
    # each estimate's own Monte Carlo SE: sd of the weights / (sqrt(S) mean weight)
    w = np.exp(refined_draws.log_weight - refined_draws.log_weight.max(0))
    se = w.std(0) / (np.sqrt(w.shape[0]) * w.mean(0))
    assert np.all(np.abs(error) < 4 * se + 1e-6), (error, se)
    assert abs(error.mean()) < 0.01
    assert np.mean(amortized.log_likelihood.numpy() - exact) < -1  # the poor proposal's estimates fall short
    assert (refined_draws.pareto_k >= 0.7).mean() <= 0.1 < 0.8 <= (amortized_draws.pareto_k >= 0.7).mean()
    assert np.median(refined_draws.log_weight.var(0)) < 0.01 * np.median(amortized_draws.log_weight.var(0))
    # the refined q is near the exact posterior, and its ELBO near log p(x)
    mean, sd = linear_gaussian.exact_posterior(vae, x)
    loc, scale = refined_proposals(vae, x, 300)
    assert torch.allclose(loc, mean, atol=0.1) and torch.allclose(scale, sd, rtol=0.15)
    assert 0 < exact.mean() - refined.elbo.mean().item() < 0.05 < exact.mean() - amortized.elbo.mean().item()


@pytest.mark.slow
def test_refinement_is_per_example_whatever_the_batch():
    """Adam is elementwise, so refining examples together takes each one's own steps: the
    same example refined alone and among others ends at the same q, up to the draws."""
    vae, x, _ = linear_gaussian.make(D=4, L=2, N=8, proposal="narrow")
    vae.eval()
    torch.manual_seed(0)
    together = refined_proposals(vae, x, 300)
    torch.manual_seed(1)
    alone = refined_proposals(vae, x[:1], 300)
    assert torch.allclose(together[0][:1], alone[0], atol=0.1) and torch.allclose(together[1][:1], alone[1], rtol=0.15)


def test_evaluate_and_analyze_take_refine(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--samples", "100", "--limit", "40", "--refine", "20"]) == 0
    printed = capsys.readouterr().out
    assert "refined per example by 20 steps" in printed
    summary = json.loads((digits_run / "evaluation" / "valid.json").read_text())
    assert summary["refine"] == 20 and summary["log_likelihood"] < 0
    assert main(["analyze", str(digits_run), "--samples", "100", "--limit", "40", "--draws", "5", "--refine", "20"]) == 0
    diagnostics = json.loads((digits_run / "analysis" / "diagnostics.json").read_text())
    assert diagnostics["refine"] == 20
    assert "refined per example by 20 steps" in (digits_run / "analysis" / "report.md").read_text()


def test_refine_refuses_a_discrete_latent_in_one_line(tmp_path, capsys):
    out = tmp_path / "gmvae"
    assert main(["train", "--out", str(out), "--model", "gmvae", "--inference", "trace_enum", "--quiet",
                 "--set", "inference.schedule.epochs=1"]) == 0
    capsys.readouterr()
    code = main(["evaluate", str(out), "--samples", "10", "--limit", "10", "--refine", "5"])
    assert_one_line_error(code, capsys.readouterr().err, "--refine refines a Gaussian q(z|x)", "discrete latent y")


def test_a_runs_spec_sets_the_default_refinement(tmp_path, capsys):
    out = tmp_path / "refined"
    assert main(["train", "--out", str(out), "--quiet", "--set", "inference.schedule.epochs=1",
                 "--set", "model.refine_steps=10"]) == 0
    assert main(["evaluate", str(out), "--samples", "20", "--limit", "20"]) == 0
    assert json.loads((out / "evaluation" / "valid.json").read_text())["refine"] == 10
    assert main(["evaluate", str(out), "--samples", "20", "--limit", "20", "--refine", "0"]) == 0
    assert json.loads((out / "evaluation" / "valid.json").read_text())["refine"] == 0
    assert "from q(z|x))" in capsys.readouterr().out
