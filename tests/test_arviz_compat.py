"""ArviZ 0.x (Python 3.11) and ArviZ 1.x (Python 3.12+) give the same analysis: each reads
the posterior.nc the other writes, k-hat is the same number on both, the summaries carry
the same 90% HDI, and the LOO of the amortized posterior matches the exact log p(x).

The files in tests/data were written by ``python tests/test_arviz_compat.py`` under each
version (posterior_arviz0.nc and psis_arviz0.npz on 3.11 with ArviZ 0.23,
posterior_arviz1.nc on 3.12 with ArviZ 1.3); every test here runs under both.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import linear_gaussian as lg
from pyro_vae.analysis import arviz_compat
from pyro_vae.analysis.inference_data import psis, to_inference_data

DATA = Path(__file__).parent / "data"


def tiny_posterior():
    """4 examples of the linear-Gaussian model, 30 draws (10 stored): the same numbers on
    both versions (seeded torch; PSIS with the same tail)."""
    vae, x, _ = lg.make(N=4)
    torch.manual_seed(0)
    return to_inference_data(vae.float(), x.float(), num_samples=30, keep_draws=10, labels=torch.arange(4) % 2)


def psis_weights() -> dict:
    """Log weights of light and Pareto-tailed (k = 0.3, 0.8) rows and of N(0, 1)/N(0, 0.8^2) at
    draws from N(0, 0.8^2) (a tail of shape 1 - 0.8^2 = 0.36), for S = 1000 and 60."""
    rng = np.random.default_rng(0)
    rows = np.stack([rng.normal(0, 0.5, 1000), np.log1p(rng.pareto(1 / 0.3, 1000)), np.log1p(rng.pareto(1 / 0.8, 1000)),
                     0.5 * rng.normal(0, 0.8, 1000) ** 2 * (1 / 0.8**2 - 1)])
    return {"S1000": rows.astype(np.float32), "S60": rows[:, :60].astype(np.float32)}


@pytest.mark.parametrize("writer", [0, 1])
def test_each_version_reads_the_posterior_nc_the_other_writes(writer):
    """The files written under ArviZ 0.x and 1.x (from the same draws) read back, under the
    installed version, to the same groups, variables, dims, coordinates and values as each
    other, and as the data built here (to float32 rounding: another CPU may round torch's
    draws differently)."""
    import arviz as az

    built = arviz_compat.groups(tiny_posterior())
    other = arviz_compat.groups(arviz_compat.read_netcdf(DATA / f"posterior_arviz{1 - writer}.nc"))
    path = DATA / f"posterior_arviz{writer}.nc"
    for loaded in (arviz_compat.read_netcdf(path), az.from_netcdf(str(path), engine="h5netcdf")):
        groups = arviz_compat.groups(loaded)
        assert groups.keys() == built.keys() == {"posterior", "sample_stats", "observed_data", "constant_data"}
        for name, group in groups.items():
            assert set(group.data_vars) == set(built[name].data_vars), name
            for var in group.data_vars:
                assert group[var].dims == built[name][var].dims == other[name][var].dims, (name, var)
                assert group[var].dtype == other[name][var].dtype, (name, var)
                # the same draws; k-hat and PSIS computed by each version's PSIS: equal to float rounding
                np.testing.assert_allclose(group[var].values, other[name][var].values, rtol=1e-12, err_msg=f"{name}/{var}")
                np.testing.assert_allclose(group[var].values, built[name][var].values, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name}/{var}")
            for coord in group.coords:
                np.testing.assert_array_equal(group[coord].values, built[name][coord].values)
        assert loaded.posterior.attrs["num_samples"] == 30 and loaded.sample_stats.attrs["draws_kept"] == 10
        assert loaded.posterior["z"].shape == (1, 10, 4, 2)


def test_the_round_trip_under_this_version_is_identical(tmp_path):
    data = tiny_posterior()
    arviz_compat.write_netcdf(data, tmp_path / "posterior.nc")
    for name, group in arviz_compat.groups(arviz_compat.read_netcdf(tmp_path / "posterior.nc")).items():
        xr.testing.assert_identical(group, arviz_compat.groups(data)[name])


def test_khat_is_the_same_number_on_both_versions():
    """ArviZ 0.x fits the Pareto tail to ceil(min(S/5, 3 sqrt S)) weights, 1.x to the floor:
    one draw more moved k-hat by 0.01 typically, up to about 0.1 near the 0.7 threshold. arviz_compat gives 0.x the same tail, so both
    reproduce the k-hat and PSIS log-means computed under ArviZ 0.23 (psis_arviz0.npz)."""
    reference = np.load(DATA / "psis_arviz0.npz")
    for name, log_weights in psis_weights().items():
        np.testing.assert_array_equal(log_weights, reference[f"{name}_log_weights"])
        khat, psis_mean, is_mean = psis(log_weights)
        np.testing.assert_allclose(khat, reference[f"{name}_khat"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(psis_mean, reference[f"{name}_psis"], rtol=0, atol=1e-9)
        # and the smoothed weights are on the raw ones' scale: where the tail is light (k < 0.7),
        # the plain IS mean of the same weights is close
        assert np.all(np.abs(psis_mean - is_mean)[[0, 1, 3]] < 0.05), (name, psis_mean - is_mean)
    khat = psis(psis_weights()["S1000"])[0]
    assert khat[0] < 0.2 and abs(khat[1] - 0.3) < 0.15 and khat[2] > 0.5  # Pareto tails of shape 0.3 and 0.8
    assert 0 < khat[3] < 1 - 0.8**2, khat  # P(w > t) ~ t^(-1/(1 - 0.8^2)) far out; lighter at S = 1000
    assert np.all(np.isinf(psis(np.zeros((2, 20)))[0]))  # 20 draws: a tail of 4, too few to fit (as ArviZ 0.x)


def test_tied_weights_give_the_same_finite_khat_on_both_versions():
    """float32 log weights of q at the exact posterior (the linear-Gaussian model) take only
    about ten distinct values per example, and constant ones one: exact ties, on which ArviZ
    0.x gave k-hat = inf and 1.x NaN or an error. arviz_compat dequantizes such rows, so both
    versions reproduce the k-hat computed under ArviZ 0.23 (psis_ties_arviz0.npz), every one
    finite, and the PSIS estimate stays the plain importance-sampling one (to 1e-8 nats)."""
    reference = np.load(DATA / "psis_ties_arviz0.npz")
    log_weights = reference["log_weights"]
    assert max(len(np.unique(row)) for row in log_weights) < 30  # ties indeed
    smoothed, khat = arviz_compat.psislw(log_weights)
    assert np.all(np.isfinite(khat))
    np.testing.assert_allclose(khat, reference["khat"], rtol=0, atol=1e-9)
    psis_mean = np.logaddexp.reduce(smoothed, axis=-1) - np.log(log_weights.shape[-1])
    np.testing.assert_allclose(psis_mean, np.logaddexp.reduce(log_weights, axis=-1) - np.log(log_weights.shape[-1]),
                               rtol=0, atol=1e-8)
    untied = psis_weights()["S1000"]  # rows without ties are left exactly as they were
    assert np.array_equal(arviz_compat.dequantize_ties(untied, 30), untied)


def test_summary_and_hdi_are_the_pinned_90_percent_hdi():
    """mean, sd and the narrowest interval holding 90% of the draws (brute force), under the
    column names of ArviZ 0.x on both versions."""
    draws = np.random.default_rng(2).gamma(2.0, size=(1, 400, 3, 2))  # skewed: an HDI is not an equal-tailed interval
    data = arviz_compat.to_data({"posterior": xr.Dataset({"z": (("chain", "draw", "obs", "latent"), draws)},
                                                         coords={"obs": np.arange(3), "latent": np.arange(2)})})
    table = arviz_compat.summary(data, var_names=["z"], coords={"obs": [2, 0], "latent": [1]})
    assert list(table.index) == ["z[2, 1]", "z[0, 1]"] and list(table.columns) == ["mean", "sd", "hdi_5%", "hdi_95%"]
    for label, (n, d) in zip(table.index, [(2, 1), (0, 1)]):
        values = np.sort(draws[0, :, n, d])
        inside = int(np.floor(0.9 * len(values)))
        widths = values[inside:] - values[: len(values) - inside]
        low, high = values[widths.argmin()], values[widths.argmin() + inside]
        assert table.loc[label, "hdi_5%"] == pytest.approx(low) and table.loc[label, "hdi_95%"] == pytest.approx(high)
        assert arviz_compat.hdi(values) == pytest.approx((low, high))
        assert table.loc[label, "mean"] == pytest.approx(values.mean()) and table.loc[label, "sd"] == pytest.approx(values.std(ddof=1), rel=1e-3)
        assert np.quantile(values, 0.05) != pytest.approx(low, abs=1e-3)  # not the equal-tailed interval
    assert arviz_compat.INTERVAL_LABEL == "90% HDI"


def test_loo_of_the_amortized_posterior_is_the_exact_log_px():
    """With local latents and fixed networks, p(x_i | x_-i) = p(x_i), and the leave-one-out
    posterior of z_i is the prior, so the LOO weights of draws from q(z|x_i) are
    p(z)/q(z|x_i): ``loo_approximate_posterior`` with log_p = log p(x_i, z) and
    log_q = log q(z|x_i) (per example) estimates log p(x_i). On the linear-Gaussian model
    (s = 2: q close enough to the prior for k-hat < 0.7) it matches the exact value and our
    importance-sampled log p(x), example by example."""
    vae, x, exact = lg.make(N=20, s=2.0)
    torch.manual_seed(0)
    data = to_inference_data(vae.float(), x.float(), num_samples=4000)
    stats = data.sample_stats
    log_lik = stats["log_likelihood_x"].values[0].astype(np.float64)  # (draws, n)
    log_w = stats["log_importance_weight"].values[0].astype(np.float64)  # log p(x, z) - log q(z|x)
    elpd, khat = arviz_compat.loo_approximate_posterior(log_lik, log_w, np.zeros_like(log_w))
    assert elpd.shape == khat.shape == (20,) and np.all(khat < 0.7), khat
    is_ll = stats["is_log_likelihood"].values
    # Monte Carlo error: the ratio estimator's two sums, each with relative SE std(w)/(sqrt(S) mean(w))
    rel_se = lambda a: np.exp(a - a.max(0)).std(0) / (np.sqrt(len(a)) * np.exp(a - a.max(0)).mean(0))  # noqa: E731
    se = np.hypot(rel_se(log_w), rel_se(log_w - log_lik))
    assert np.all(np.abs(elpd - exact) < 5 * se + 1e-3), np.abs(elpd - exact) / se
    assert np.all(np.abs(elpd - is_ll) < 5 * se + 1e-3), np.abs(elpd - is_ll) / se
    # the same estimator without smoothing, by hand: log sum_s w_s - log sum_s w_s / p(x|z_s)
    lse = lambda a: np.logaddexp.reduce(a, axis=0)  # noqa: E731
    np.testing.assert_allclose(elpd, lse(log_w) - lse(log_w - log_lik), atol=2e-3)


def write_fixtures():
    """The files of tests/data for the installed ArviZ (run under each version once)."""
    arviz_compat.write_netcdf(tiny_posterior(), DATA / f"posterior_arviz{arviz_compat.major()}.nc")
    if arviz_compat.major() == 0:
        arrays = {}
        for name, log_weights in psis_weights().items():
            khat, psis_mean, _ = psis(log_weights)
            arrays.update({f"{name}_log_weights": log_weights, f"{name}_khat": khat, f"{name}_psis": psis_mean})
        np.savez_compressed(DATA / "psis_arviz0.npz", **arrays)


if __name__ == "__main__":  # the script's folder is on sys.path: linear_gaussian imports
    write_fixtures()
