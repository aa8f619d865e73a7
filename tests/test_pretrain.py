"""VaDE's initialization of the Gaussian-mixture VAE (infer/pretrain.py, model.discrete.init):
on well-separated synthetic clusters, p(z|y) is the Gaussian mixture scikit-learn fits to the
pretrained codes, q(y|x) agrees with its assignments, and the clusters are found; the
structures it cannot start are refused in one line."""

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from helpers import assert_one_line_error, run_cli
from pyro_vae.infer.metrics import classification_summary
from pyro_vae.infer.pretrain import autoencoder_codes, vade_initialize
from pyro_vae.model import build_vae
from pyro_vae.spec import ModelSpec

C, FEATURES = 3, 8


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (C, FEATURES))
    labels = rng.integers(0, C, n)
    return torch.as_tensor(centres[labels] + rng.normal(0, 0.5, (n, FEATURES)), dtype=torch.float32), torch.as_tensor(labels)


def gmvae():
    spec = ModelSpec(latent_dim=2, likelihood={"kind": "gaussian", "scale": "fixed", "initial_scale": 0.5},
                     encoder={"kind": "mlp", "hidden": [32]}, decoder={"kind": "mlp", "hidden": [32]},
                     discrete={"classes": C, "shape": "mixture", "encoder_reads_y": False, "init": "vade",
                               "classifier": {"kind": "mlp", "hidden": [32]}})
    torch.manual_seed(0)
    return build_vae(spec, (FEATURES,), num_data=300)


def test_vade_sets_p_z_given_y_to_the_mixture_of_the_codes_and_q_y_to_its_assignments():
    x, labels = blobs()
    vae = gmvae()
    before = torch.get_rng_state()
    mixture = vade_initialize(vae, x, epochs=30, seed=0)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream untouched
    codes = autoencoder_codes(vae, x).double().numpy()
    independent = GaussianMixture(C, covariance_type="diag", random_state=0, reg_covar=1e-4).fit(codes)
    assert np.allclose(vae.prior.loc.detach().numpy(), independent.means_, atol=1e-5)
    scales = torch.nn.functional.softplus(vae.prior.raw_scale).detach().numpy()
    assert np.allclose(scales, np.sqrt(independent.covariances_), rtol=1e-4)
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
    assert (tmp_path / "run" / "checkpoint.pt").exists()
