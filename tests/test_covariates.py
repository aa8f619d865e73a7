"""Covariates: reading and coding them, the conditional model, counterfactual decoding."""

import json
import math
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
from scipy import stats

from pyro_vae.data import load_data
from pyro_vae.errors import DataError, SpecError
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

from linear_gaussian import LINEAR, softplus_inverse

PYTHON = sys.executable


def cli(*args, cwd=None):
    return subprocess.run([PYTHON, "-m", "pyro_vae", *map(str, args)], capture_output=True, text=True, cwd=cwd)


# --- the conditional linear-Gaussian model -----------------------------------------------------
#
# c = (k, u): a category k of 3 (one-hot e_k) and a continuous u; f(c) = (e_k, u).
# p(z | c) = N(A f + a, diag sigma^2) (sigma the same for every c), p(x | z, c) = N(W z + V f + b, s^2 I)
#   =>  p(x | c) = N(W (A f + a) + V f + b, W diag(sigma^2) W^T + s^2 I),
# and p(z | x, c) = N(P^-1 [(A f + a) / sigma^2 + W^T (x - V f - b) / s^2], P^-1), P = diag(1/sigma^2) + W^T W / s^2,
# diagonal where W's columns are orthogonal: linear in (x, f), so the linear encoder holds it exactly.

D, L, S_NOISE = 4, 2, 0.5


def conditional_linear_gaussian(seed=0, n=48, exact=True):
    """(vae, x, c, exact log p(x | c) per example)."""
    spec = Spec.from_dict({"model": {
        "latent_dim": L, "encoder": LINEAR, "decoder": LINEAR,
        "likelihood": {"kind": "gaussian", "scale": "fixed", "initial_scale": S_NOISE, "min_scale": 0.0},
        "condition": {"prior": True, "prior_network": LINEAR}},
        "data": {"name": "digits", "covariates": ["k", "u"]}}).model
    torch.manual_seed(seed)
    vae = build_vae(spec, (D,), covariates=[3, 0]).double()
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    W = q[:, :L] * torch.tensor([1.5, 0.8], dtype=torch.float64)
    V, b = torch.randn(D, 4, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    A, a = torch.randn(L, 4, generator=g, dtype=torch.float64), torch.randn(L, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.9, 1.4], dtype=torch.float64)
    s = torch.nn.functional.softplus(vae.likelihood.raw_scale).item()
    P = 1 / sigma**2 + (W**2).sum(0) / s**2  # diagonal
    with torch.no_grad():
        prior = vae.prior.normal.network.net[0]  # (mu, raw sigma) of f
        prior.weight.zero_()
        prior.weight[:L] = A
        prior.bias[:L] = a
        prior.bias[L:] = torch.tensor([softplus_inverse(v - 1e-4) for v in sigma.tolist()], dtype=torch.float64)
        decoder = vae.decoder
        decoder.network.net[0].weight.copy_(W)
        decoder.network.net[0].bias.copy_(b)
        decoder.inject["0"].weight.copy_(V)
        encoder = vae.encoder
        e = encoder.network.net[0]
        e.weight.zero_()
        e.weight[:L] = (W / s**2).T / P[:, None]
        e.bias[:L] = (a / sigma**2 - W.T @ b / s**2) / P
        e.bias[L:] = torch.tensor([softplus_inverse(v - 1e-4) for v in (1 / P.sqrt()).tolist()], dtype=torch.float64)
        encoder.inject["0"].weight.zero_()
        encoder.inject["0"].weight[:L] = ((A / sigma[:, None] ** 2) - W.T @ V / s**2) / P[:, None]
        if not exact:
            e.weight[:L] += 0.03 * torch.randn(L, D, generator=g, dtype=torch.float64)
            e.bias[L:] = torch.tensor([softplus_inverse(1.3 * v) for v in (1 / P.sqrt()).tolist()], dtype=torch.float64)
    k = torch.randint(3, (n,), generator=g)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    c = torch.stack([k.double(), u], -1)
    f = torch.cat([torch.nn.functional.one_hot(k, 3).double(), u[:, None]], -1)
    mean = (f @ A.T + a) @ W.T + f @ V.T + b
    cov = W @ torch.diag(sigma**2) @ W.T + s**2 * torch.eye(D, dtype=torch.float64)
    x = mean + torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    exact_logpx = np.array([stats.multivariate_normal(mean[i].numpy(), cov.numpy()).logpdf(x[i].numpy()) for i in range(n)])
    return vae, x, c, exact_logpx


def test_conditional_linear_gaussian_log_p_x_given_c_is_the_closed_form_at_the_exact_posterior():
    vae, x, c, exact = conditional_linear_gaussian()
    result = importance_sample(vae, x, 20, condition=c)
    # at the exact posterior every weight is p(x|c): the estimate is exact, draw by draw
    np.testing.assert_allclose(result.log_likelihood.numpy(), exact, atol=1e-6)
    np.testing.assert_allclose(result.elbo.numpy(), exact, atol=1e-6)


def test_conditional_linear_gaussian_log_p_x_given_c_within_monte_carlo_error():
    vae, x, c, exact = conditional_linear_gaussian(exact=False)
    torch.manual_seed(0)
    result = importance_sample(vae, x, 2000, condition=c)
    gap = result.log_likelihood.numpy() - exact
    # per example within Monte Carlo error; on average within 4 standard errors of 0
    assert np.abs(gap).max() < 0.05, gap
    assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(len(gap)), gap
    assert (result.elbo.numpy() < exact).all()  # a proposal off the posterior: the ELBO is below log p(x|c)


def test_each_example_is_scored_under_its_own_covariates():
    vae, x, c, exact = conditional_linear_gaussian()
    swapped = c.clone()
    swapped[:, 0] = (c[:, 0] + 1) % 3
    wrong = importance_sample(vae, x, 5, condition=swapped).log_likelihood.numpy()
    assert (np.abs(wrong - exact) > 1e-3).all()
    chunked = importance_sample(vae, x, 20, budget=4 * 20 * 30, condition=c)  # chunks of few examples
    np.testing.assert_allclose(chunked.log_likelihood.numpy(), exact, atol=1e-6)


def test_a_conditional_model_needs_its_condition():
    vae, x, c, _ = conditional_linear_gaussian()
    with pytest.raises(ValueError, match="condition="):
        vae.q(x)
    with pytest.raises(ValueError, match="condition has shape"):
        vae.q(x, condition=c[:, :1])


# --- covariates from the data ------------------------------------------------------------------


def _table(n=120, seed=0):
    """Features with a batch shift and a linear trend in a continuous covariate."""
    rng = np.random.default_rng(seed)
    batch = rng.choice(["b1", "b0"], n)
    age = rng.normal(40, 10, n)
    x = rng.normal(0, 1, (n, 5)) + 2.0 * (batch == "b1")[:, None] + 0.1 * (age - 40)[:, None]
    return x.astype(np.float32), batch, age


@pytest.fixture
def npz_file(tmp_path):
    x, batch, age = _table()
    path = tmp_path / "cells.npz"
    np.savez(path, train=x[:100], valid=x[100:], train_batch=batch[:100], valid_batch=batch[100:],
             train_age=age[:100], valid_age=age[100:])
    return path, batch, age


def _data(path, covariates, **more):
    table = {"path": str(path), "covariates": covariates, **more}
    if str(path).endswith(".npz"):
        table.setdefault("test_fraction", 0.0)  # the training split is the file's
    return load_data(Spec.from_dict({"data": table}).data, seed=0)


def test_npz_covariates_are_coded_on_the_training_split(npz_file):
    path, batch, age = npz_file
    data = _data(path, ["batch", "age"])
    assert data.coding.layout == [2, 0]
    assert data.coding["batch"].categories == ["b0", "b1"]  # sorted
    assert data.coding["age"].mean == pytest.approx(age[:100].mean())
    assert data.coding["age"].sd == pytest.approx(age[:100].std())
    c = data.covariates["valid"].numpy()
    np.testing.assert_array_equal(c[:, 0], (batch[100:] == "b1").astype(np.float32))
    np.testing.assert_allclose(c[:, 1], (age[100:] - age[:100].mean()) / age[:100].std(), rtol=1e-5)
    arrays = dict(np.load(path))
    np.savez(path, **arrays, train_dose=np.arange(100) % 3, valid_dose=np.arange(20) % 3)
    assert _data(path, ["dose"]).coding.layout == [3]  # integers: categorical
    forced = _data(path, ["dose"], covariate_kinds={"dose": "continuous"})
    assert forced.coding.layout == [0] and forced.coding["dose"].mean == pytest.approx(np.mean(np.arange(100) % 3))
    with pytest.raises(DataError, match="covariate 'age' has the value '.*', which training never saw"):
        _data(path, ["age"], covariate_kinds={"age": "categorical"})  # the validation ages are new categories


def test_csv_covariate_columns_are_not_features(tmp_path):
    x, batch, age = _table(40)
    path = tmp_path / "t.csv"
    rows = ["a,b,batch,c,d,e,age"] + [",".join([*(f"{v:.4f}" for v in r[:2]), batch[i], *(f"{v:.4f}" for v in r[2:]),
                                                 f"{age[i]:.3f}"]) for i, r in enumerate(x)]
    path.write_text("\n".join(rows) + "\n")
    data = _data(path, ["batch", "age"])
    assert data.data_shape == (5,) and data.feature_names == ["a", "b", "c", "d", "e"]
    assert data.coding.layout == [2, 0]
    everything = np.concatenate([data.covariates[s][:, 0].numpy() for s in ("train", "valid", "test")])
    origin = np.concatenate([data.origin[s] for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(everything, (batch[origin] == "b1"))


def test_npy_sibling_file_and_digits_label(tmp_path):
    x, batch, _ = _table(50)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x.batch.npy", batch)
    data = _data(tmp_path / "x.npy", ["batch"], in_memory=False)  # streamed: covariates are read with their rows
    assert data.streamed and data.coding["batch"].categories == ["b0", "b1"]
    np.testing.assert_array_equal(data.covariates["train"][:, 0].numpy(), batch[data.origin["train"]] == "b1")
    digits = load_data(Spec.from_dict({"data": {"name": "digits", "covariates": ["label"]}}).data, seed=0)
    np.testing.assert_array_equal(digits.covariates["valid"][:, 0].numpy(), digits.labels["valid"].numpy())


def test_h5ad_obs_columns(tmp_path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    x, batch, age = _table(60)
    path = tmp_path / "c.h5ad"
    anndata.AnnData(np.abs(x).round(), obs=pd.DataFrame({"batch": pd.Categorical(batch), "age": age},
                                                         index=[str(i) for i in range(60)])).write_h5ad(path)
    data = _data(path, ["batch", "age"])
    assert data.coding.layout == [2, 0]
    np.testing.assert_array_equal(data.covariates["test"][:, 0].numpy(), batch[data.origin["test"]] == "b1")


@pytest.mark.parametrize("problem, message", [
    ("missing", "no covariate 'site'"),
    ("nan", "missing \\(NaN\\)"),
])
def test_bad_covariates_are_one_line(npz_file, problem, message):
    path, batch, age = npz_file
    if problem == "missing":
        with pytest.raises(DataError, match=message):
            _data(path, ["batch", "site"])
    else:
        arrays = dict(np.load(path))
        arrays["train_age"][3] = np.nan
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=message):
            _data(path, ["age"])


@pytest.mark.integration
def test_spec_keys_are_checked():
    with pytest.raises(SpecError, match="covariate_kinds names 'age'"):
        Spec.from_dict({"data": {"name": "digits", "covariate_kinds": {"age": "continuous"}}})
    with pytest.raises(SpecError, match="data.covariates names none"):
        build_vae(Spec.from_dict({"model": {"condition": {}}, "data": {"name": "digits"}}).model, (64,))
    result = cli("train", "--set", "model.condition.encoder=false", "--set", "inference.schedule.epochs=1", "--check")
    assert result.returncode == 2 and "data.covariates names none" in result.stderr, result.stderr
    with pytest.raises(SpecError, match="whose p\\(z\\|y\\) is the prior"):
        spec = Spec.from_dict({"model": {"discrete": {"classes": 3}, "condition": {"prior": True}},
                               "data": {"name": "digits", "covariates": ["label"]}})
        build_vae(spec.model, (64,), covariates=[10])


# --- training: every estimator, the compiled step ----------------------------------------------


def _conditional_spec(path, estimator="trace_elbo", compile=False, condition=None, epochs=2):
    batch = 100 if estimator == "tail_adaptive" else 25  # it pools particles over the whole training set
    return Spec.from_dict({
        "model": {"latent_dim": 2, "likelihood": {"kind": "gaussian"}, "encoder": {"kind": "mlp", "hidden": [16]},
                  "decoder": {"kind": "mlp", "hidden": [16, 16]}, "condition": condition or {}},
        "inference": {"estimator": {"kind": estimator}, "schedule": {"epochs": epochs, "batch_size": batch, "compile": compile}},
        "data": {"path": str(path), "covariates": ["batch", "age"], "test_fraction": 0.0},
    })


def _fit(spec):
    from pyro_vae.infer.train import Trainer

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    data = load_data(spec.data, seed=0)
    vae = build_vae(spec.model, data.data_shape, num_data=len(data.splits["train"]), covariates=data.coding.layout)
    vae.conditioning.observe(data.covariates["train"])
    trainer = Trainer(vae, data, spec.inference, progress=False, log=lambda line: None)
    trainer.initial = {k: v.clone() for k, v in vae.state_dict().items()}
    state = trainer.fit()
    return trainer, state


@pytest.mark.parametrize("estimator", ["trace_elbo", "trace_mean_field", "iwae", "renyi", "stl", "iwae_dreg",
                                       "tail_adaptive", "trace_graph"])
def test_every_estimator_trains_a_conditional_model(npz_file, estimator):
    trainer, state = _fit(_conditional_spec(npz_file[0], estimator,
                                            condition={"prior": True, "inject": "every_layer", "embedding_dim": 3}))
    assert all(math.isfinite(row["val_elbo"]) for row in state.history)
    assert set(trainer.vae.decoder.inject) == {"0", "2"}  # both hidden layers read c
    moved = [k for k, v in trainer.vae.state_dict().items() if not torch.equal(v, trainer.initial[k])]
    for part in ("decoder.inject.0", "decoder.inject.2", "decoder.features.embeddings", "encoder.inject.0",
                 "encoder.features.embeddings", "prior.normal.network", "prior.features.embeddings"):
        assert any(k.startswith(part) for k in moved), part  # trained: c reaches every part that reads it


def test_the_compiled_step_is_the_eager_step(npz_file):
    eager, eager_state = _fit(_conditional_spec(npz_file[0], compile=False, condition={"prior": True}))
    compiled, compiled_state = _fit(_conditional_spec(npz_file[0], compile="graph", condition={"prior": True}))
    assert compiled.compiled is not None
    for name, value in eager.vae.state_dict().items():
        assert torch.equal(value, compiled.vae.state_dict()[name]), name
    assert [r["train_elbo"] for r in compiled_state.history] == pytest.approx([r["train_elbo"] for r in eager_state.history])


def test_the_batch_rows_covariates_reach_the_model(npz_file):
    """model and guide read c of the batch's own rows: the decoder's input term of the batch
    covariate gets gradient only from rows whose batch is in the step."""
    spec = _conditional_spec(npz_file[0], condition={"encoder": False})
    data = load_data(spec.data, seed=0)
    vae = build_vae(spec.model, data.data_shape, num_data=len(data.splits["train"]), covariates=data.coding.layout)
    vae.conditioning.observe(data.covariates["train"])
    x = data.splits["train"]
    rows = torch.nonzero(data.covariates["train"][:, 0] == 0).flatten()[:10]  # batch b0 only
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[rows], rows)
    loss.backward()
    weight = vae.decoder.inject["0"].weight.grad  # columns: one-hot b0, one-hot b1, age
    assert weight[:, 0].abs().sum() > 0 and weight[:, 1].abs().sum() == 0



def test_streamed_training_reads_the_same_covariates(tmp_path):
    """A streamed .npy and the same rows in memory train to the same weights: covariates are
    read with their rows either way."""
    x, batch, age = _table(100)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x.batch.npy", batch)
    np.save(tmp_path / "x.age.npy", age)
    weights = []
    for in_memory in (True, False):
        spec = _conditional_spec(tmp_path / "x.npy")
        spec.data.in_memory = in_memory
        trainer, _ = _fit(spec)
        assert trainer.data.streamed == (not in_memory)
        weights.append(trainer.vae.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name

# --- the command line: train, evaluate, encode --transform, sample --condition -----------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cov")
    x, batch, age = _table(160, seed=1)
    data = folder / "cells.npz"
    np.savez(data, train=x[:120], valid=x[120:], train_batch=batch[:120], valid_batch=batch[120:],
             train_age=age[:120], valid_age=age[120:])
    run = folder / "run"
    result = cli("train", "--set", f"data.path={data}", "--set", 'data.covariates=["batch","age"]',
                 "--set", "data.test_fraction=0", "--set", "model.likelihood.kind=gaussian", "--set", "model.latent_dim=2",
                 "--set", "inference.schedule.epochs=3", "--set", "inference.schedule.batch_size=40", "--out", run, "--quiet")
    assert result.returncode == 0, result.stderr
    return folder, run, data, batch, age


@pytest.mark.integration
def test_cli_evaluate_encode_transform_and_sample(cli_run):
    from pyro_vae.runs import load_run

    folder, run, data, batch, age = cli_run
    assert "[model.condition]" in (run / "spec.toml").read_text()  # the defaults, recorded
    result = cli("evaluate", run, "--samples", 10)
    assert result.returncode == 0, result.stderr
    codes = folder / "codes.npz"
    result = cli("encode", run, "--out", codes, "--transform", "batch=b0", "--split", "valid")
    assert result.returncode == 0, result.stderr
    written = np.load(codes)
    assert str(written["transform"]) == "batch=b0" and written["transformed"].shape == (40, 5)
    # the same reconstruction from Python: E[x | mean of q(z|x, c), c with batch b0]
    loaded = load_run(run)
    expected = loaded.decode(written["mean"], condition={"batch": "b0", "age": age[120:]})
    np.testing.assert_allclose(written["transformed"], expected.numpy(), rtol=1e-5, atol=1e-5)
    other = loaded.decode(written["mean"], condition={"batch": "b1", "age": age[120:]})
    assert not np.allclose(other.numpy(), expected.numpy())
    api = loaded.encode(np.load(data)["valid"], covariates={"batch": batch[120:], "age": age[120:]}, transform={"batch": "b0"})
    np.testing.assert_allclose(api["mean"], written["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(api["transformed"], written["transformed"], rtol=1e-5, atol=1e-5)
    result = cli("sample", run, "--condition", "batch=b1", "--n", 20)
    assert result.returncode == 0, result.stderr
    samples = np.load(run / "samples" / "samples.npz")
    assert (samples["condition"][:, 0] == 1).all() and samples["mean"].shape == (20, 5)
    assert len(set(samples["condition"][:, 1].tolist())) > 1  # age drawn from the training rows


@pytest.mark.integration
def test_cli_refuses_bad_covariates_in_one_line_and_writes_nothing(cli_run):
    folder, run, data, batch, age = cli_run
    arrays = dict(np.load(data))
    arrays["valid_batch"] = np.where(arrays["valid_batch"] == "b0", "b7", arrays["valid_batch"])
    unseen = folder / "unseen.npz"
    np.savez(unseen, **arrays)
    result = cli("evaluate", run, "--data", unseen, "--samples", 5)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "'b7', which training never saw" in result.stderr
    assert not list((run / "evaluation").glob("unseen*"))
    arrays = dict(np.load(data))
    del arrays["valid_age"]
    missing = folder / "missing.npz"
    np.savez(missing, **arrays)
    result = cli("encode", run, "--data", missing, "--split", "valid", "--out", folder / "m.npz")
    assert result.returncode == 2 and "no covariate 'age'" in result.stderr and not (folder / "m.npz").exists()
    for args in (["sample", run, "--condition", "batch=b9"], ["sample", run, "--condition", "site=1"],
                 ["encode", run, "--out", folder / "t.npz", "--transform", "batch"]):
        result = cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (folder / "t.npz").exists()


@pytest.mark.integration
def test_cli_analyze_colours_the_latent_space_by_each_categorical_covariate(cli_run):
    folder, run, data, batch, age = cli_run
    result = cli("analyze", run, "--samples", 10, "--limit", 30)
    assert result.returncode == 0, result.stderr
    analysis = run / "analysis"
    assert (analysis / "latent_space_batch.png").is_file() and (analysis / "samples_by_batch.png").is_file()
    assert not (analysis / "latent_space_age.png").exists()  # continuous: no colouring by category
    assert "samples_by_batch.png" in (analysis / "report.md").read_text()


@pytest.mark.integration
def test_compare_varies_where_the_covariates_enter(cli_run, tmp_path):
    folder, run, data, batch, age = cli_run
    out = tmp_path / "cmp"
    result = cli("compare", "--vary", "inference.estimator.kind=trace_elbo,iwae", "--vary", "model.condition.encoder=true,false",
                 "--zip", "--set", f"data.path={data}",
                 "--set", 'data.covariates=["batch","age"]', "--set", "data.test_fraction=0",
                 "--set", "model.likelihood.kind=gaussian", "--set", "model.latent_dim=2",
                 "--set", "inference.schedule.epochs=2", "--set", "inference.schedule.batch_size=40",
                 "--samples", 10, "--snr-k", "1,2", "--snr-repeats", 3, "--seeds", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "comparison.json").read_text())
    assert len(rows["cells"]) == 2
    assert (out / "comparison_snr.png").is_file()  # the gradient probes read the batch rows' covariates


# --- demonstrations: a continuous covariate's shift, batch correction on counts ----------------


@pytest.mark.integration
@pytest.mark.slow
def test_decoding_one_z_under_two_values_of_a_continuous_covariate_shifts_the_mean_as_planted(tmp_path):
    """x = A z + slope * (age - 50) / 10 + noise: the decoded mean of one z under age 40 and 60
    differs by 2 slope, feature by feature, within 10%. The CVAE's encoder reads age too (the
    default): an encoder blind to it cannot hold p(z | x, c), which depends on c here, and its
    ELBO optimum shrinks the decoder's age term (measured: up to 26% short after 40 epochs)."""
    from pyro_vae.runs import load_run

    rng = np.random.default_rng(0)
    n, slope = 1500, np.array([2.0, -1.5, 1.5, 2.0, -2.5])
    age = rng.normal(50, 10, n)
    z = rng.normal(0, 1, (n, 2))
    x = z @ rng.normal(0, 1, (2, 5)) + slope * (age - 50)[:, None] / 10 + 0.2 * rng.normal(0, 1, (n, 5))
    np.savez(tmp_path / "d.npz", train=x.astype(np.float32), train_age=age)
    run = tmp_path / "run"
    result = cli("train", "--set", f"data.path={tmp_path / 'd.npz'}", "--set", 'data.covariates=["age"]',
                 "--model", "gaussian_per_feature", "--set", "model.latent_dim=2", "--set", "inference.optimizer.lr=0.01",
                 "--set", "inference.schedule.batch_size=64", "--set", "inference.schedule.epochs=60", "--out", run, "--quiet")
    assert result.returncode == 0, result.stderr
    loaded = load_run(run)
    sd = loaded.preprocessing.sd.numpy()  # the decoded mean is of the standardized data
    low, high = (loaded.decode(np.zeros((1, 2)), condition={"age": v}).numpy()[0] * sd for v in (40.0, 60.0))
    np.testing.assert_allclose(high - low, 2 * slope, rtol=0.1)  # measured: within 5%


def _counts_with_batches(path, n=2000, genes=50, seed=0):
    """Two cell types (15 genes 4x up in each), two batches with a planted multiplicative
    effect per gene on batch b1 (log-normal, sd 0.5, geometric mean 1), depth varying 20%, NB
    counts (inverse dispersion 10), balanced: written as an .h5ad with obs batch and cell_type."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    base = rng.lognormal(1.0, 1.0, genes)
    types = np.ones((2, genes))
    types[1, rng.choice(genes, 15, replace=False)] = 4.0
    types[0, rng.choice(genes, 15, replace=False)] *= 4.0
    effect = rng.lognormal(0.0, 0.5, genes)
    effect /= np.exp(np.log(effect).mean())
    batch, cell = np.repeat([0, 1], n // 2), np.tile([0, 1], n // 2)
    mean = base * types[cell] * np.where(batch[:, None] == 1, effect, 1.0) * rng.lognormal(0.0, 0.2, n)[:, None]
    counts = rng.negative_binomial(10.0, 10.0 / (10.0 + mean))
    obs = pd.DataFrame({"batch": pd.Categorical(np.array(["b0", "b1"])[batch]),
                        "cell_type": pd.Categorical(np.array(["A", "B"])[cell])}, index=[f"c{i}" for i in range(n)])
    anndata.AnnData(counts.astype(np.float32), obs=obs).write_h5ad(path)
    return effect


@pytest.mark.integration
@pytest.mark.slow
def test_batch_correction_on_counts(tmp_path):
    """Trained with the batch as a covariate (the shipped count_batch_corrected: NB, library
    size, the decoder alone reads the batch), a logistic regression on the latent means
    predicts the batch at most 60% of the time on a balanced held-out half while the cell type
    stays at least 95%; without the covariate the batch is predictable. encode --transform
    batch=b0 removes the planted effect: the ratio of mean (normalized) expression between
    the batches is within 10% of 1 for every gene, where before it follows the planted one."""
    anndata = pytest.importorskip("anndata")
    from sklearn.linear_model import LogisticRegression

    data = tmp_path / "cells.h5ad"
    effect = _counts_with_batches(data)
    scores = {}
    for covariate in (True, False):
        run = tmp_path / f"run_{covariate}"
        # without covariates: the same networks and likelihood (count_nb with the library size)
        model = ["--model", "count_batch_corrected", "--set", 'data.covariates=["batch"]'] if covariate else \
            ["--model", "count_nb", "--set", "model.likelihood.library_size=true"]
        result = cli("train", *model, "--set", f"data.path={data}", "--set", "model.latent_dim=2",
                     "--set", "inference.schedule.epochs=40", "--out", run, "--quiet")
        assert result.returncode == 0, result.stderr
        out = tmp_path / f"codes_{covariate}.h5ad"
        result = cli("encode", run, "--out", out, *(["--transform", "batch=b0"] if covariate else []))
        assert result.returncode == 0, result.stderr
        encoded = anndata.read_h5ad(out)
        z = encoded.obsm["X_pyro_vae"]
        order = np.random.default_rng(0).permutation(len(z))
        train, test = order[: len(z) // 2], order[len(z) // 2 :]
        for name, value in (("batch", "b1"), ("cell_type", "B")):
            y = (encoded.obs[name] == value).to_numpy()
            scores[covariate, name] = LogisticRegression(max_iter=2000).fit(z[train], y[train]).score(z[test], y[test])
        if covariate:
            b1 = (encoded.obs["batch"] == "b1").to_numpy()
            shares = lambda m: m / m.sum(1, keepdims=True)  # noqa: E731 (normalized expression: the depth left out)
            after = shares(encoded.layers["pyro_vae_batch=b0"])
            before = shares(np.asarray(encoded.X))
            ratio_after = after[b1].mean(0) / after[~b1].mean(0)
            ratio_before = before[b1].mean(0) / before[~b1].mean(0)
    print(scores, np.abs(ratio_after - 1).max(), np.abs(ratio_before - 1).max())
    assert scores[True, "batch"] <= 0.60 and scores[True, "cell_type"] >= 0.95
    assert scores[False, "batch"] >= 0.90 and scores[False, "cell_type"] >= 0.95
    assert np.abs(ratio_after - 1).max() < 0.10
    assert np.abs(ratio_before - 1).max() > 0.5  # the planted effect, seen before the transform:
    assert np.corrcoef(np.log(ratio_before), np.log(effect))[0, 1] > 0.95
