"""The gradient probes (infer/gradients.py): the signal-to-noise ratio of an estimator's
gradients per parameter group, SNR = mean over parameters of |E[g]| / sd[g] (Rainforth et
al., 2018) from repeated estimates on one batch, taken alike whatever the VAE's mode and
beta, and SNR against K keeping each estimator's own settings."""

import pytest
import torch

from helpers import small_gaussian_vae as small
from pyro_vae.data import Dataset
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.gradients import gradient_snr, snr_against_k


def test_snr_against_k_keeps_every_setting_and_the_full_label():
    """Regression: renyi:alpha=0.9 and renyi:alpha=-2 collapsed into one row 'renyi' at alpha 0.5."""
    vae = small(latent_dim=2)
    x = torch.randn(8, 6)
    data = Dataset({"train": x}, {}, (6,), "t")
    vae.num_data = 8
    entries = [("renyi:alpha=0.9", {"kind": "renyi", "alpha": 0.9, "k": 5}),
               ("renyi:alpha=-2", {"kind": "renyi", "alpha": -2.0, "k": 5})]
    rows = snr_against_k(vae, data, entries, [3], repeats=6, batch_size=8)
    assert [r["estimator"] for r in rows] == ["renyi:alpha=0.9", "renyi:alpha=-2"]
    index = torch.arange(8)
    for row, (_, table) in zip(rows, entries):
        direct = gradient_snr(vae, ESTIMATORS.build({**table, "k": 3}), x, index, 6)
        assert row["snr_encoder"] == pytest.approx(direct["encoder"].snr, rel=1e-9)
    assert rows[0]["snr_encoder"] != pytest.approx(rows[1]["snr_encoder"], rel=1e-6)


def test_gradient_snr_probes_alike_whatever_the_mode_and_beta_before():
    """Regression: the first probe ran at beta = 1 in training mode, later ones at the last
    step's beta in evaluation mode. Every probe is now in training mode at the given beta,
    and the VAE's mode and beta are restored."""
    vae = small(latent_dim=2, encoder={"kind": "mlp", "hidden": [16], "dropout": 0.3})
    x, index = torch.randn(8, 6), torch.arange(8)
    vae.num_data = 8
    estimator = ESTIMATORS.build({"kind": "trace_elbo"})
    results = []
    for training, beta in ((True, 1.0), (False, 0.2)):
        vae.train(training)
        vae.beta = beta
        torch.manual_seed(0)
        results.append(gradient_snr(vae, estimator, x, index, 5, beta=0.7))
        assert vae.training == training and vae.beta == beta
    assert results[0]["encoder"].snr == results[1]["encoder"].snr
    assert results[0]["decoder"].variance == results[1]["decoder"].variance
