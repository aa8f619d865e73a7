"""Everything that differs between ArviZ 0.x and ArviZ 1.x, and nothing else.

Python 3.11 gets ArviZ 0.x (``InferenceData``, ``arviz.psislw``, ``arviz.summary``);
Python 3.12 and newer get ArviZ 1.x, a metapackage over ``arviz_base`` (data as an
``xarray.DataTree``) and ``arviz_stats`` (PSIS, LOO, summaries). The rest of the package
builds plain ``xarray.Dataset`` groups and calls the functions here, so it does not know
which ArviZ it runs on. Both containers answer ``data.posterior["z"]`` and
``data.sample_stats.attrs``, and both write the same netCDF file (one HDF5 group per
ArviZ group), which the other reads.

PSIS (Vehtari et al., 2024): of S log weights, the M = floor(min(S/5, 3 sqrt(S))) largest
are replaced by the expected order statistics of a generalized Pareto fit; its shape is
k-hat. ArviZ 1.x takes the floor and ArviZ 0.x the ceiling, so 0.x is called with the
relative efficiency r_eff that gives it the same M (its only use of r_eff): k-hat is then
the same number on both, to float rounding. With M < 5 there is no fit (k-hat = inf, the
weights unsmoothed), as on 0.x.

Intervals are pinned: 90% highest-density intervals (``INTERVAL``) on both, whatever each
version's default (0.x: 94% HDI, 1.x: 89% equal-tailed).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import version

import numpy as np
import xarray as xr

INTERVAL = 0.9  # the probability of every interval the analysis reports: a 90% HDI
INTERVAL_LABEL = f"{INTERVAL:.0%} HDI"
# the columns of summary(): ArviZ 0.x's names, kept on 1.x so that diagnostics.json reads the same
LOW, HIGH = f"hdi_{(1 - INTERVAL) / 2:.0%}", f"hdi_{(1 + INTERVAL) / 2:.0%}"


@lru_cache(maxsize=None)
def major() -> int:
    """The installed ArviZ's major version (0 or 1), read without importing it."""
    return int(version("arviz").split(".")[0])


@contextmanager
def quiet():
    """ArviZ's notices that would flood a terminal, filtered where ArviZ is called: 0.x's
    refactor notice at import and the per-call Pareto-k warnings of both (k-hat is
    reported in diagnostics.json). No figure is drawn by ArviZ."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*[Ee]stimated shape parameter of Pareto distribution", category=UserWarning)
        yield


def _arviz():
    with quiet():
        import arviz as az
    return az


# --- data ------------------------------------------------------------------------------


def to_data(groups: dict[str, xr.Dataset]):
    """The groups as ArviZ's container: InferenceData on 0.x, an xarray.DataTree on 1.x."""
    if major() >= 1:
        return xr.DataTree.from_dict({name: dataset for name, dataset in groups.items()})
    return _arviz().InferenceData(**groups)


def groups(data) -> dict[str, xr.Dataset]:
    """The groups of either container (or of a file read by :func:`read_netcdf`) as Datasets."""
    if isinstance(data, xr.DataTree):
        return {name: node.to_dataset() for name, node in data.children.items()}
    return {name: data[name] for name in data.groups()}


def write_netcdf(data, path) -> None:
    """One netCDF4 (HDF5) file, one group per ArviZ group, compressed as ArviZ 0.x does."""
    if isinstance(data, xr.DataTree):
        encoding = {f"/{name}": {var: {"zlib": True} for var in node.data_vars if node[var].dtype.kind in "biuf"}
                    for name, node in data.children.items()}
        data.to_netcdf(str(path), engine="h5netcdf", encoding=encoding)
    else:
        data.to_netcdf(str(path), engine="h5netcdf")


def read_netcdf(path):
    """A posterior.nc, written by either version, as this version's container (loaded)."""
    if major() >= 1:
        with xr.open_datatree(str(path), engine="h5netcdf") as tree:
            return tree.load()
    with quiet():
        return _arviz().from_netcdf(str(path), engine="h5netcdf")


# --- PSIS and LOO ----------------------------------------------------------------------


def _tail_length(S: int) -> int:
    return int(math.floor(min(S / 5, 3 * math.sqrt(S))))


def dequantize_ties(log_weights: np.ndarray, M: int) -> np.ndarray:
    """The rows whose M + 1 largest log weights hold exact ties, dequantized. Ties come from
    float32 rounding (a q near the posterior: every log weight is log p(x) to a few ulps), and
    make the two ArviZ disagree: 0.x fits only the values above the cutoff (k-hat = inf when 4
    or fewer remain), 1.x returns NaN or raises. Each value of such a row moves uniformly
    within its float32 step (at least float32's epsilon), with a fixed seed: the weights a
    float32 computation could not tell apart become a continuous sample again, and both
    versions fit the same tail. Rows without ties are left exactly as they are."""
    top = np.sort(log_weights, axis=-1)[..., -(M + 1):]
    tied = np.any(np.diff(top, axis=-1) == 0, axis=-1)
    if not tied.any():
        return log_weights
    step = np.maximum(np.spacing(np.abs(log_weights).astype(np.float32)).astype(np.float64), np.finfo(np.float32).eps)
    jitter = (np.random.default_rng(0).random(log_weights.shape) - 0.5) * step
    return np.where(tied[..., None], log_weights + jitter, log_weights)


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed log weights, k-hat) of each row of ``log_weights`` (n, S), the smoothed
    weights on the scale of the raw ones (not normalized): log 1/S sum_s exp(smoothed_s)
    is the PSIS estimate of log E_q[w]."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    S, M = log_weights.shape[-1], _tail_length(log_weights.shape[-1])
    log_weights = dequantize_ties(log_weights, M)
    if M < 5:  # too few draws for a Pareto fit: as ArviZ 0.x, no smoothing and k-hat = inf
        return log_weights.copy(), np.full(log_weights.shape[:-1], np.inf)
    if major() >= 1:
        from arviz_stats.base import array_stats

        # arviz_stats takes log-likelihood-like values (weights exp(-a)) and returns normalized log weights
        smoothed, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
        # the smallest weight is in the body, which smoothing leaves alone: it gives back the scale
        lowest = np.argmin(log_weights, axis=-1)[..., None]
        scale = np.take_along_axis(log_weights, lowest, -1) - np.take_along_axis(smoothed, lowest, -1)
        return smoothed + scale, np.asarray(khat, dtype=np.float64)
    with quiet():
        smoothed, khat = _arviz().psislw(log_weights, reff=9 * S / (M - 0.5) ** 2, normalize=False)
    return np.asarray(smoothed), np.asarray(khat, dtype=np.float64)


def loo_approximate_posterior(log_likelihood: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elpd_i, k-hat_i) of PSIS-LOO with draws from an approximate posterior q
    (Magnusson et al., 2019): per observation i, the draws are importance-weighted by
    p(theta_s | y_-i) / q(theta_s) proportional to exp(log_p - log_q - log p(y_i|theta_s)),
    the weights Pareto-smoothed, and elpd_i = log sum_s w~_s p(y_i|theta_s) with normalized
    w~. Arrays (draws, n); ``log_p`` and ``log_q`` may differ per observation (a local latent
    per example). On 1.x this is ``arviz_stats.loo_approximate_posterior``; 0.x has none, so
    the same formula is taken with :func:`psislw`."""
    log_likelihood, log_p, log_q = (np.asarray(a, dtype=np.float64) for a in (log_likelihood, log_p, log_q))
    if major() >= 1:
        from arviz_stats import loo_approximate_posterior as loo

        dims = ("chain", "draw", "obs")
        tree = xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"y": (dims, log_likelihood[None])})})
        with quiet():
            result = loo(tree, xr.DataArray(log_p[None], dims=dims), xr.DataArray(log_q[None], dims=dims), pointwise=True)
        return result.elpd_i.values, result.pareto_k.values
    correction = log_p - log_q
    smoothed, khat = psislw((correction - log_likelihood).T)
    normalized = smoothed - np.logaddexp.reduce(smoothed, axis=-1, keepdims=True)
    return np.logaddexp.reduce(normalized + log_likelihood.T, axis=-1), khat


# --- summaries -------------------------------------------------------------------------


def summary(data, var_names: list[str], coords: dict):
    """Mean, sd and the ``INTERVAL`` HDI of the posterior's variables, one row per element
    ("z[3, 1]"), columns mean, sd, ``LOW``, ``HIGH`` (a pandas DataFrame, unrounded)."""
    if major() >= 1:
        import arviz_stats

        table = arviz_stats.summary(data, var_names=var_names, coords=coords, kind="stats", ci_prob=INTERVAL,
                                    ci_kind="hdi", round_to="none")
        label = f"hdi{INTERVAL * 100:.0f}"
        return table.rename(columns={f"{label}_lb": LOW, f"{label}_ub": HIGH})
    with quiet():
        return _arviz().summary(data, var_names=var_names, coords=coords, kind="stats", hdi_prob=INTERVAL,
                                round_to="none")


def hdi(values: np.ndarray) -> tuple[float, float]:
    """The ``INTERVAL`` highest-density interval of a 1-D sample."""
    values = np.asarray(values)
    if major() >= 1:
        from arviz_stats.base import array_stats

        low, high = array_stats.hdi(values, INTERVAL)
    else:
        with quiet():
            low, high = _arviz().hdi(values, hdi_prob=INTERVAL)
    return float(low), float(high)
