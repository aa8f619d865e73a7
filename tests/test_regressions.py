"""Regression tests for the defects of the correctness review (issue 9) that the
catalogue-wide property tests (test_properties.py) do not already pin down: active units,
normalization, dynamic binarization when scoring, compare's SNR rows, the VampPrior's
pseudo-inputs and dropout, SNR probes, and early stopping during a KL warm-up."""

import gzip
import struct

import numpy as np
import pytest
import torch

from helpers import write_npz
from pyro_vae.data import Dataset, load_data, read_source
from pyro_vae.infer.gradients import gradient_snr, snr_against_k
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.infer.metrics import active_units, summarize
from pyro_vae.model import build_vae
from pyro_vae.spec import DataSpec, Spec


def small(latent_dim=8, features=6, **model):
    spec = Spec.from_dict({"model": {
        "latent_dim": latent_dim,
        "likelihood": {"kind": "gaussian"},
        "encoder": {"kind": "mlp", "hidden": [16]},
        "decoder": {"kind": "mlp", "hidden": [16]},
        **model,
    }}).model
    torch.manual_seed(0)
    return build_vae(spec, (features,))


# --- active units ---------------------------------------------------------------------------


@pytest.mark.parametrize("draws", [50, 100, 200])
def test_no_active_units_when_q_ignores_x_whatever_the_number_of_draws(draws):
    """Regression: q(z|x) = N(0, I) (no closed-form mean) reported 8/8 active units at 50
    draws, 3/8 at 100: the Monte Carlo variance of the estimated means (1/S) was counted
    as variance across examples. Both evaluate and analyze now remove it."""
    from pyro_vae.analysis.inference_data import posterior_draws

    vae = small(posterior={"kind": "user_components:StandardNormalPosterior"})
    vae.eval()
    x = torch.randn(1000, 6)
    torch.manual_seed(1)
    result = importance_sample(vae, x, draws)
    summary = summarize(result, draws)
    raw = int((result.posterior_mean.var(0) > 0.01).sum())  # what was reported before
    assert summary["active_units"] == 0, summary["posterior_mean_variance"]
    assert np.allclose(summary["posterior_mean_mc_variance"], 1 / draws, rtol=0.1)
    if draws == 50:
        assert raw == 8  # the defect this removes
    torch.manual_seed(1)
    moments = posterior_draws(vae, x, draws, keep_draws=10).moments
    assert active_units(moments.mean, moments.mc_variance) == 0


def test_exact_means_are_used_where_q_has_them():
    vae = small()
    vae.eval()
    x = torch.randn(50, 6)
    result = importance_sample(vae, x, 3)
    assert torch.allclose(result.posterior_mean, vae.q(x).mean, atol=1e-6)
    assert result.posterior_mean_mc_variance.abs().max() == 0


@pytest.mark.integration
def test_evaluate_and_analyze_report_the_same_active_units(digits_run):
    """Regression: evaluate reported 5/16 and analyze 7/16 for the same run."""
    from pyro_vae.workflows.analyze import analyze_run
    from pyro_vae.workflows.evaluate import evaluate_run

    evaluation = evaluate_run(digits_run, num_samples=100, limit=150, device="cpu").summary
    analysis = analyze_run(digits_run, num_samples=100, limit=150, draws=20, device="cpu").diagnostics
    assert evaluation["active_units"] == analysis["active_units"]
    assert np.allclose(evaluation["posterior_mean_variance"], analysis["posterior_mean_variance"], atol=1e-5)


# --- one normalization rule ------------------------------------------------------------------


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def test_binary_bytes_stay_binary_in_every_format(tmp_path):
    """Regression: IDX bytes holding only 0 and 1 were divided by 255 ({0, 0.0039}) and passed
    the Bernoulli check; the same bytes in an .npz stayed {0, 1}."""
    binary = (np.random.default_rng(0).random((40, 3, 3)) > 0.5).astype(np.uint8)
    idx = _write_idx(tmp_path / "b-images-idx3-ubyte.gz", binary)
    npz = write_npz(tmp_path / "b.npz", train=binary)
    for path in (idx, npz):
        data = load_data(DataSpec(path=str(path)), seed=0)
        values = torch.cat([data.split("train").flatten(), data.split("valid").flatten()]).unique()
        assert values.tolist() == [0.0, 1.0], path


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_integer_levels_of_any_dtype_are_normalized_alike(tmp_path, dtype):
    """Regression: int64 levels 0..255 were never normalized; uint8 ones were."""
    levels = np.random.default_rng(1).integers(0, 256, (30, 4))
    reference = load_data(DataSpec(path=str(write_npz(tmp_path / "u8.npz", train=levels.astype(np.uint8)))), seed=0)
    other = load_data(DataSpec(path=str(write_npz(tmp_path / "other.npz", train=levels.astype(dtype)))), seed=0)
    assert torch.equal(reference.split("train"), other.split("train"))
    assert reference.split("train").max() <= 1 and reference.split("train").max() > 0.9


def test_auto_normalization_follows_the_likelihood(tmp_path):
    from pyro_vae.model.likelihoods import LIKELIHOODS

    levels = np.random.default_rng(2).integers(0, 256, (30, 4)).astype(np.int64)
    path = str(write_npz(tmp_path / "levels.npz", train=levels))
    for kind, divided in (("bernoulli", True), ("gaussian", True), ("categorical", False), ("poisson", False)):
        data = load_data(DataSpec(path=path, standardize=False), seed=0, likelihood=LIKELIHOODS.resolve(kind))
        assert (data.split("train").max() <= 1) == divided, kind
    forced = load_data(DataSpec(path=path, normalize=True), seed=0, likelihood=LIKELIHOODS.resolve("poisson"))
    assert forced.split("train").max() <= 1
    kept = load_data(DataSpec(path=path, normalize=False), seed=0, likelihood=LIKELIHOODS.resolve("bernoulli"))
    assert kept.split("train").max() > 1
    counts = np.random.default_rng(3).poisson(500, (30, 4))  # past 255: counts, never divided
    assert read_source(None, str(write_npz(tmp_path / "c.npz", train=counts))).max_level is None


# --- dynamic binarization when scoring the train split -----------------------------------


@pytest.mark.integration
def test_scoring_a_dynamically_binarized_train_split_draws_binary_data(tmp_path):
    """Regression: evaluate/analyze --split train scored the grayscale intensities."""
    from pyro_vae.cli import main
    from pyro_vae.workflows.evaluate import heldout
    from pyro_vae.runs import load_run

    out = tmp_path / "dynamic"
    assert main(["train", "--model", "bernoulli_mlp", "--out", str(out), "--set", "data.binarize=dynamic", "--set", "inference.schedule.epochs=1",
                 "--quiet"]) == 0
    run = load_run(out, "cpu")
    x = heldout(run, split="train").x
    assert x.unique().tolist() == [0.0, 1.0]
    again = heldout(run, split="train").x
    assert torch.equal(x, again)  # seeded: every command scores the same draw
    data = Dataset({"train": torch.full((200, 3), 0.3)}, {}, (3,), "t", dynamic=True)
    assert abs(data.scored("train", 0).mean().item() - 0.3) < 0.06


# --- compare: SNR against K keeps each estimator's settings --------------------------------


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


# --- the VampPrior -----------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood, bounds", [("bernoulli", (0.0, 1.0)), ("poisson", (0.0, None)), ("gaussian", (None, None))])
def test_vamp_pseudo_inputs_stay_in_the_encoder_inputs_domain(likelihood, bounds):
    vae = small(likelihood={"kind": likelihood}, prior={"kind": "vamp", "components": 6})
    with torch.no_grad():
        vae.prior.pseudo_inputs.copy_(torch.linspace(-3, 5, 36).reshape(6, 6))
    u = vae.prior.inputs()
    lower, upper = bounds
    assert (lower is None or u.min() >= lower) and (upper is None or u.max() <= upper)
    assert (lower is not None or u.min() < -2) and (upper is not None or u.max() > 4)
    free = small(likelihood={"kind": likelihood}, prior={"kind": "vamp", "components": 6, "pseudo_inputs": "free"})
    with torch.no_grad():
        free.prior.pseudo_inputs.copy_(torch.linspace(-3, 5, 36).reshape(6, 6))
    assert torch.equal(free.prior.inputs(), free.prior.pseudo_inputs)


def test_vamp_prior_is_deterministic_under_encoder_dropout():
    vae = small(prior={"kind": "vamp", "components": 6}, encoder={"kind": "mlp", "hidden": [16], "dropout": 0.5})
    z = torch.randn(4, 8)
    vae.train()
    first, second = vae.prior().log_prob(z), vae.prior().log_prob(z)
    assert torch.equal(first, second)
    assert vae.encoder.training  # the encoder's own mode is left as it was
    vae.eval()
    assert torch.allclose(vae.prior().log_prob(z), first)


# --- early stopping and the KL warm-up ---------------------------------------------------------


def test_patience_counts_from_the_end_of_the_warmup():
    from pyro_vae.infer.train import Trainer

    vae = small(latent_dim=2)
    x = torch.randn(20, 6)
    data = Dataset({"train": x, "valid": x[:5]}, {}, (6,), "t")
    spec = Spec.from_dict({"inference": {"schedule": {"epochs": 10, "batch_size": 10, "patience": 1,
                                                       "kl_warmup_epochs": 3}}})
    trainer = Trainer(vae, data, spec.inference, progress=False)
    for epoch, value in enumerate([-10.0, -11.0, -12.0, -13.0, -14.0], start=1):
        trainer.end_epoch({"epoch": epoch, "val_elbo": value})
        assert trainer.state.stopped_early == (epoch == 4), epoch  # epochs 2-3 worse, but in the warm-up
        if trainer.state.stopped_early:
            break
    assert trainer.state.best_epoch == 1


def test_active_units_without_enough_draws_are_reported_as_unknown(tmp_path):
    """One draw from a posterior without a closed-form mean cannot separate Monte Carlo
    noise from spread across examples: no count, and the JSON stays standard."""
    import json

    from pyro_vae.analysis.text import describe_active_units

    vae = small(posterior={"kind": "user_components:StandardNormalPosterior"})
    vae.eval()
    summary = summarize(importance_sample(vae, torch.randn(20, 6), 1), 1)
    assert summary["active_units"] is None and summary["latent_dim"] == 8
    assert "needs at least 2 draws" in describe_active_units(summary)
    json.loads(json.dumps(summary), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    exact = summarize(importance_sample(small(), torch.randn(20, 6), 1), 1)
    assert describe_active_units(exact).endswith("of 8")


@pytest.mark.integration
def test_the_mixture_prior_trains_under_the_traced_elbo(tmp_path):
    """The hostile-spec fuzzer's case (issue 30): a mixture prior with inference.estimator.jit
    = true stopped with a TorchScript traceback in the first backward pass (log_softmax's
    backward given the float64 gradient of the prior's float64 sum)."""
    from pyro_vae.cli import main

    code = main(["train", "--out", str(tmp_path / "run"), "--quiet", "--set", "model.prior.kind=mixture",
                 "--set", "model.prior.components=3", "--set", "model.latent_dim=2", "--set", "inference.estimator.jit=true",
                 "--set", "inference.schedule.epochs=1", "--set", "model.encoder.hidden=[16]",
                 "--set", "model.decoder.hidden=[16]"])
    assert code == 0
    assert np.isfinite(float((tmp_path / "run" / "metrics.csv").read_text().splitlines()[-1].split(",")[2]))
