"""VaDE's initialization of the Gaussian-mixture VAE (infer/pretrain.py, model.discrete.init):
on well-separated synthetic clusters, p(z|y) is the Gaussian mixture scikit-learn fits to the
pretrained codes (diagonal or full covariance, the likeliest of several fits), q(y|x) agrees
with its assignments, and the clusters are found; the structures it cannot start are refused
in one line. The full-covariance p(z|y) (model.discrete.covariance) against scipy's
densities, and TraceEnum_ELBO's loss with it against scipy at the guide's draws."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

from helpers import assert_one_line_error, run_cli, trace_enum_loss_at_draws
from pyro_vae.errors import SpecError
from pyro_vae.infer.metrics import classification_summary
from pyro_vae.infer.pretrain import autoencoder_codes, vade_initialize
from pyro_vae.model import build_vae
from pyro_vae.spec import ModelSpec, Spec

C, FEATURES = 3, 8


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (C, FEATURES))
    labels = rng.integers(0, C, n)
    return torch.as_tensor(centres[labels] + rng.normal(0, 0.5, (n, FEATURES)), dtype=torch.float32), torch.as_tensor(labels)


def gmvae(covariance="diagonal", latent_dim=2, hidden=(32,), fits=1):
    spec = ModelSpec(latent_dim=latent_dim, likelihood={"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5},
                     encoder={"kind": "mlp", "hidden": list(hidden)}, decoder={"kind": "mlp", "hidden": list(hidden)},
                     discrete={"classes": C, "shape": "mixture", "encoder_reads_y": False, "init": "vade",
                               "classifier": {"kind": "mlp", "hidden": list(hidden)}, "covariance": covariance,
                               "mixture_fits": fits})
    torch.manual_seed(0)
    return build_vae(spec, (FEATURES,), num_data=300)


def component_log_densities(mixture, codes):
    """log N(codes; mu_k, Sigma_k) per component of a fitted scikit-learn mixture, by scipy: (n, C)."""
    covariances = mixture.covariances_ if mixture.covariance_type == "full" else [np.diag(v) for v in mixture.covariances_]
    return np.stack([stats.multivariate_normal(m, c).logpdf(codes) for m, c in zip(mixture.means_, covariances)], -1)


@pytest.mark.parametrize("covariance, fits", [("diagonal", 1), ("full", 3)])
def test_vade_sets_p_z_given_y_to_the_mixture_of_the_codes_and_q_y_to_its_assignments(covariance, fits):
    x, labels = blobs()
    vae = gmvae(covariance, fits=fits)
    before = torch.get_rng_state()
    mixture = vade_initialize(vae, x, epochs=30, seed=0, fits=fits)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream untouched
    assert mixture.n_init == fits  # scikit-learn keeps the likeliest of the fits
    codes = autoencoder_codes(vae, x).double().numpy()
    independent = GaussianMixture(C, covariance_type={"diagonal": "diag", "full": "full"}[covariance], random_state=0,
                                  reg_covar=1e-4, n_init=fits).fit(codes)
    assert np.allclose(vae.prior.loc.detach().numpy(), independent.means_, atol=1e-5)
    with torch.no_grad():
        log_p = vae.prior.given(torch.eye(C)).log_prob(torch.as_tensor(codes, dtype=torch.float32).unsqueeze(-2))
    assert np.allclose(log_p.numpy(), component_log_densities(independent, codes), atol=1e-3, rtol=1e-4)
    with torch.no_grad():
        q_y = torch.softmax(vae.q_y_logits(x), -1)
    assert (q_y.argmax(-1).numpy() == mixture.predict(codes)).mean() > 0.95
    assert classification_summary(q_y, labels)["cluster_accuracy"] > 0.95


@pytest.mark.integration
@pytest.mark.parametrize("change, fragments", [
    (["--set", "model.discrete.shape=\"m2\""], ["vade", "mixture"]),
    (["--set", "model.discrete.encoder_reads_y=true"], ["vade", "encoder_reads_y"]),
    (["--set", "model.upper_layers=[{latent_dim=2}]"], ["vade", "upper_layers"]),
])
def test_structures_vade_cannot_start_are_refused_in_one_line(change, fragments, tmp_path):
    code, _, err = run_cli("train", "--model", "gmvae", "--set", "model.discrete.init=\"vade\"", *change,
                           "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_train_with_vade_pretrains_then_trains_and_says_so(tmp_path):
    code, _, err = run_cli("train", "--model", "gmvae", "--set", "model.discrete.init=\"vade\"",
                           "--set", "model.discrete.pretrain_epochs=2", "--set", "inference.schedule.epochs=1",
                           "--out", tmp_path / "run")
    assert code == 0, err
    assert "vade pretraining: epoch 2/2" in err and "mixture components fitted" in err
    assert "(diagonal covariance, the likeliest of 1 fits" in err
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def full_prior():
    """A GMVAE on 3 features, latent 3, full-covariance p(z|y) with random Cholesky factors,
    every network linear; (vae, its Cholesky factors L_k as numpy)."""
    vae = gmvae("full", latent_dim=3, hidden=()).double()
    with torch.no_grad():
        vae.prior.loc.normal_(0, 2)
        vae.prior.raw_scale.normal_(0, 0.5)
        vae.prior.off_diagonal.normal_(0, 0.7)  # the upper triangle is never read
    tril = np.tril(vae.prior.off_diagonal.detach().numpy(), -1)
    tril += np.stack([np.diag(np.log1p(np.exp(r))) for r in vae.prior.raw_scale.detach().numpy()])
    return vae, tril


def test_full_covariance_p_z_given_y_and_its_marginal_are_scipys_multivariate_normals():
    """p(z|y) = N(mu_y, L_y L_y^T); p(z) = (1/C) sum_y p(z|y); a relaxed y's L = sum_k y_k L_k."""
    vae, tril = full_prior()
    mu = vae.prior.loc.detach().numpy()
    z = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        given = vae.prior.given(torch.eye(C, dtype=torch.float64)).log_prob(z.unsqueeze(-2)).numpy()
        marginal = vae.prior().log_prob(z).numpy()
        soft = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
        relaxed = vae.prior.given(soft).log_prob(z).numpy()
    exact = np.stack([stats.multivariate_normal(mu[k], tril[k] @ tril[k].T).logpdf(z.numpy()) for k in range(C)], -1)
    assert np.allclose(given, exact, atol=1e-10)
    assert np.allclose(marginal, logsumexp(exact, -1) - math.log(C), atol=1e-10)
    w = soft.numpy()
    mixed = np.einsum("k,kij->ij", w, tril)
    assert np.allclose(relaxed, stats.multivariate_normal(w @ mu, mixed @ mixed.T).logpdf(z.numpy()), atol=1e-10)


def test_trace_enum_loss_with_a_full_covariance_p_z_given_y_against_scipy_at_its_draws():
    """-ELBO = -(N/B) sum_x E_q(z|x)[sum_y q(y|x) (log p(y) + log N(z; mu_y, L_y L_y^T) - log q(y|x))
    + log p(x|z) - log q(z|x)] at the guide's own draws (y summed): a lower bound on log p(x)
    whatever the covariance."""
    vae, tril = full_prior()
    x = torch.randn(6, FEATURES, dtype=torch.float64)
    loss, q, z = trace_enum_loss_at_draws(vae, x, num_data=30)
    with torch.no_grad():
        log_q_z = q.log_prob(z).numpy()
        log_px = vae.p_x_given(z, None, x).log_prob(x).numpy()
        q_y = torch.log_softmax(vae.q_y_logits(x), -1).numpy()
    mu, zs = vae.prior.loc.detach().numpy(), z.numpy()
    log_pz = np.stack([stats.multivariate_normal(mu[k], tril[k] @ tril[k].T).logpdf(zs) for k in range(C)], -1)
    per_y = np.exp(q_y) * (-math.log(C) + log_pz - q_y)
    elbo = per_y.sum(-1) + log_px - log_q_z
    assert loss == pytest.approx(-(30 / 6) * elbo.sum(), rel=1e-9)


@pytest.mark.parametrize("discrete, fragment", [
    ({"classes": 3, "shape": "m2", "covariance": "full"}, "covariance = \"full\" is p(z|y)'s"),
    ({"classes": 3, "mixture_fits": 3}, "mixture_fits counts the mixture fits of init = \"vade\""),
])
def test_covariance_and_mixture_fits_without_their_structure_are_refused(discrete, fragment):
    with pytest.raises(SpecError, match="model.discrete") as info:
        Spec.from_dict({"model": {"discrete": discrete}})
    assert fragment in str(info.value) and "\n" not in str(info.value)
