"""log p(x) and the ELBO in the data's own units: a standardized run reports the
density of the data as given (the standardization's log-Jacobian -sum_j log sd_j added),
so runs with and without standardization are comparable; ``standardize = "auto"``
standardizes for likelihoods of real values only."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from helpers import write_npz
from pyro_vae import load_run
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.model.likelihoods import LIKELIHOODS
from pyro_vae.runs import load_checkpoint, save_checkpoint
from pyro_vae.spec import load_spec

D, L = 5, 2
SCALES = np.array([1.0, 3.0, 0.5, 10.0, 2.0])  # features in different units


def _gaussian_file(path, n_train=400, n_valid=60):
    """x = 5 + SCALES * (W z + 0.3 eps): a rank-2 Gaussian with features in different units."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(D, L))

    def draw(n):
        return (5 + SCALES * (rng.normal(size=(n, L)) @ W.T + 0.3 * rng.normal(size=(n, D)))).astype(np.float32)

    return write_npz(path, train=draw(n_train), valid=draw(n_valid))


def _exact_posterior_encoder(out):
    """Set the run's encoder to the trained decoder's exact posterior mean, with sds 1.3 times
    its marginal sds (a diagonal proposal that covers the correlated posterior), so that
    importance sampling is accurate to Monte Carlo error whatever training reached."""
    run = load_run(out)
    vae = run.vae
    W = vae.decoder.net[0].weight.detach().double()
    b = vae.decoder.net[0].bias.detach().double()
    s2 = ((F.softplus(vae.likelihood.raw_scale) + vae.likelihood.min_scale).detach().double() ** 2).expand(D)
    S = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + W.T @ (W / s2[:, None]))
    A = S @ W.T / s2
    sd = 1.3 * S.diagonal().sqrt()
    with torch.no_grad():
        encoder = vae.encoder.net[0]
        encoder.weight.zero_()
        encoder.weight[:L] = A.float()
        encoder.bias[:L] = (-A @ b).float()
        encoder.bias[L:] = (sd + torch.log(-torch.expm1(-sd))).float()  # softplus^-1 (the 1e-4 floor is noise)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    checkpoint["weights"] = vae.state_dict()
    save_checkpoint(out / "checkpoint.pt", checkpoint)


def _closed_form(run, x):
    """log p(x) of the trained linear-Gaussian model in the data's units: with prepared data
    u = (x - m) / sd and p(u) = N(b, W W^T + diag(s^2)), x ~ N(m + sd b, diag(sd) C diag(sd))."""
    vae = run.vae.double()
    W = vae.decoder.net[0].weight.detach().numpy()
    b = vae.decoder.net[0].bias.detach().numpy()
    s = (F.softplus(vae.likelihood.raw_scale) + vae.likelihood.min_scale).detach().numpy()
    cov = W @ W.T + np.diag(np.broadcast_to(s, (D,)) ** 2)
    p = run.preprocessing
    m = np.zeros(D) if p.mean is None else np.broadcast_to(p.mean.double().numpy(), (D,))
    sd = np.ones(D) if p.sd is None else np.broadcast_to(p.sd.double().numpy(), (D,))
    return stats.multivariate_normal(m + sd * b, np.diag(sd) @ cov @ np.diag(sd)).logpdf(x)


@pytest.mark.integration
@pytest.mark.parametrize("standardize", [False, True, "per_feature"])
def test_evaluate_reports_the_closed_form_log_px_in_the_datas_units(tmp_path, capsys, standardize):
    path = _gaussian_file(tmp_path / "g.npz")
    out = tmp_path / "run"
    linear = "{kind = \"mlp\", hidden = []}"
    assert main(["train", "--data", str(path), "--out", str(out), "--quiet",
                 "--set", f"model.latent_dim={L}", "--set", "model.likelihood.kind=gaussian",
                 "--set", "model.prior.kind=standard_normal",  # the closed form's N(0, I) (the default's is a mixture)
                 "--set", f"model.encoder={linear}", "--set", f"model.decoder={linear}",
                 "--set", f"data.standardize={json.dumps(standardize)}",
                 "--set", "inference.schedule.epochs=5", "--set", "inference.optimizer.lr=0.01",
                 "--set", "inference.schedule.device=\"cpu\""]) == 0
    _exact_posterior_encoder(out)
    assert main(["evaluate", str(out), "--samples", "2000"]) == 0
    printed = capsys.readouterr().out
    run = load_run(out)
    assert (run.preprocessing.sd is not None) == bool(standardize)
    result = json.loads((out / "evaluation" / "valid.json").read_text())
    per_example = np.load(out / "evaluation" / "valid.npz")
    x = np.load(path)["valid"][per_example["index"]].astype(np.float64)
    exact = _closed_form(run, x)
    # the posterior of a linear-Gaussian model is Gaussian: 2000 draws estimate log p(x) to ~0.01 nats
    assert np.abs(per_example["log_likelihood"] - exact).max() < 0.05
    assert abs(result["log_likelihood"] - exact.mean()) < 0.01
    assert result["units"].startswith("nats per example, a density in the data's own units")
    assert ("log-Jacobian" in result["units"]) == bool(standardize)
    assert result["units"] in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"] == result["units"]


def test_standardize_auto_is_on_for_real_values_only(tmp_path):
    path = _gaussian_file(tmp_path / "g.npz")
    spec = load_spec(data=str(path))
    assert spec.data.standardize == "auto"
    for kind, standardized in (("gaussian", True), ("laplace", True), ("student_t", True), ("bernoulli", False)):
        data = load_data(spec.data, 0, likelihood=LIKELIHOODS.resolve(kind))
        assert (data.preprocessing.sd is not None) == standardized, kind
        if standardized:  # per feature, from the training split
            assert np.allclose(data.preprocessing.sd.numpy(), np.load(path)["train"][data.origin["train"]].std(0), rtol=1e-4)
    digits = load_spec()  # levels and counts stay as they are
    for kind in ("binomial", "categorical", "poisson"):
        assert load_data(digits.data, 0, likelihood=LIKELIHOODS.resolve(kind)).preprocessing.sd is None


def test_a_standardized_density_differs_by_the_log_jacobian_only():
    """The same decoder output scored with and without the units: -sum_j log sd_j apart, the
    gradients the same (a constant)."""
    lik = LIKELIHOODS.build({"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5}, (D,))
    out, x = torch.randn(3, 1, D, requires_grad=True), torch.randn(3, D)
    plain = lik(out).log_prob(x)
    (grad_plain,) = torch.autograd.grad(plain.sum(), out)
    sd = torch.tensor(SCALES, dtype=torch.float32)
    lik.use_data_units(-torch.log(sd).sum().item())
    shifted = lik(out).log_prob(x)
    (grad_shifted,) = torch.autograd.grad(shifted.sum(), out)
    assert torch.allclose(shifted - plain, torch.full((3,), -float(np.log(SCALES).sum())), atol=1e-5)
    assert torch.equal(grad_plain, grad_shifted)
    binomial = LIKELIHOODS.build({"kind": "binomial", "levels": 4}, (D,))
    binomial.use_data_units(-3.0)  # a mass function has no units to change
    assert binomial.log_jacobian == 0.0
