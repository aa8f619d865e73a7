"""The figures a new user looks at first: one colour scale for the data's figures,
the interpolation's endpoints and colour bar, posterior marginals whose numbers do not sit
on the curves, and a Gaussian q(z|x)'s exact contours in the pair plot."""

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.analysis import figures, plots
from pyro_vae.model import build_vae
from pyro_vae.spec import ModelSpec


def gaussian_vae(features=64):
    torch.manual_seed(0)
    spec = ModelSpec(latent_dim=3, likelihood={"kind": "gaussian"}, encoder={"kind": "mlp", "hidden": [8]},
                     decoder={"kind": "mlp", "hidden": [8]})
    return build_vae(spec, (features,), num_data=100).eval()


@pytest.fixture
def saved(monkeypatch):
    """The figures save_figure is given, drawn (Agg), instead of written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    kept = []

    def keep(fig, path):
        FigureCanvasAgg(fig).draw()
        kept.append(fig)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(plots, "save_figure", keep)
    return kept


def _colour_ranges(fig):
    return [image.get_clim() for ax in fig.axes for image in ax.images]


def test_inputs_reconstructions_and_samples_share_one_colour_scale(saved, tmp_path):
    """An unbounded likelihood: the colours span the 1st to 99th percentile of inputs,
    reconstructions and samples together, the same in both figures (each used its own)."""
    vae = gaussian_vae()
    x = torch.randn(40, 64) * 3 + 1
    metrics = [{"epoch": 1, "train_elbo": -10.0, "val_elbo": -11.0}]
    torch.manual_seed(1)
    figures.training_figures(tmp_path, vae, x, metrics, num_samples=16)
    reconstructions_fig, samples_fig = saved[1], saved[2]
    torch.manual_seed(1)
    inputs = x[:16]
    shown = np.concatenate([t.detach().numpy().ravel() for t in (inputs, vae.reconstruct(inputs), vae.sample(16)[1])])
    expected = tuple(np.percentile(shown, [1, 99]))
    for fig in (reconstructions_fig, samples_fig):
        assert all(clim == pytest.approx(expected, rel=1e-5) for clim in _colour_ranges(fig)), _colour_ranges(fig)


def test_interpolation_shows_its_endpoints_and_keeps_the_colour_bar_label_inside(saved, tmp_path):
    vae = gaussian_vae()
    x = torch.randn(2, 64)
    with torch.no_grad():
        means = vae.q(x).mean
    plots.interpolation(tmp_path / "i.png", vae, means[0], means[1], x[0], x[1], (7, 9), steps=10)
    fig = saved[0]
    top = fig.axes[0].images[0].get_array()  # the originals' row: x_a first, x_b last, blanks between
    first, last = np.asarray(top[:, :8]), np.asarray(top[:, -8:])
    assert np.allclose(first, x[0].reshape(8, 8).numpy()) and np.allclose(last, x[1].reshape(8, 8).numpy())
    assert "7 (left, t = 0) and 9 (right, t = 1)" in fig.axes[0].get_title()
    figure_box = fig.bbox
    for ax in fig.axes:
        label = ax.xaxis.label if ax.xaxis.label.get_text() else ax.yaxis.label
        if "percentile" in label.get_text():  # the colour bar's
            box = label.get_window_extent()
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1
            break
    else:
        raise AssertionError("no colour bar")


def test_gaussian_moments_of_each_posterior_and_none_for_others():
    loc, scale = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, 2.0]])
    mean, cov = plots.gaussian_moments(dist.Normal(loc, scale).to_event(1))
    assert np.allclose(mean, [[0.5, -1.0]]) and np.allclose(cov, [np.diag([0.09, 4.0])])
    factor = torch.tensor([[[1.0], [0.5]]])
    mean, cov = plots.gaussian_moments(dist.LowRankMultivariateNormal(loc, factor, scale.square()))
    assert np.allclose(cov[0], factor[0] @ factor[0].T + torch.diag(scale[0].square()))
    mixture = dist.MixtureSameFamily(dist.Categorical(torch.ones(2)), dist.Normal(torch.zeros(2, 2), 1.0).to_event(1))
    assert plots.gaussian_moments(mixture) is None


def _idata(draws):
    import xarray as xr

    return type("IData", (), {"posterior": xr.Dataset({"z": (("chain", "draw", "obs", "latent"), draws[None])})})()


def test_marginals_keep_their_numbers_off_the_curves_and_the_pair_plot_draws_exact_contours(saved, tmp_path):
    """A Gaussian q(z|x): the marginals carry mean and 90% HDI (mean +- 1.645 sd) in their
    titles, no text inside the axes (ArviZ's labels sat on the curves); the pair plot's
    three contours are the ellipses at Mahalanobis distance 1, 2, 3 of q's covariance, with
    a legend that says what they hold."""
    rng = np.random.default_rng(0)
    mean = np.array([[0.3, -0.2, 1.0]])
    cov = np.array([[[0.5, 0.2, 0.0], [0.2, 0.3, 0.0], [0.0, 0.0, 1.0]]])
    draws = rng.multivariate_normal(mean[0], cov[0], size=200)[:, None, :]  # (draws, obs, latent)
    plots.example_posteriors(tmp_path / "p.png", tmp_path / "q.png", _idata(draws), [0], [0, 1], (mean, cov))
    marginals, pair = saved
    for ax in marginals.axes:
        assert not ax.texts
    low, high = 0.3 - 1.6448536 * np.sqrt(0.5), 0.3 + 1.6448536 * np.sqrt(0.5)
    assert f"mean 0.30, 90% HDI [{low:.2f}, {high:.2f}]" in marginals.axes[0].get_title()
    ax = pair.axes[0]
    rings = [line for line in ax.lines if "of its mass" in line.get_label()]
    assert [line.get_label() for line in rings] == [f"q(z|x): {m} of its mass inside" for m in ("39%", "86%", "99%")]
    inverse = np.linalg.inv(cov[0][:2, :2])
    for r, line in zip((1, 2, 3), rings):
        d = np.stack(line.get_data(), 1) - mean[0, :2]
        assert np.allclose(np.sqrt(np.einsum("ni,ij,nj->n", d, inverse, d)), r)
    legend_texts = [t.get_text() for legend in pair.legends for t in legend.get_texts()]
    assert "200 draws from q(z|x)" in legend_texts and "q(z|x): 86% of its mass inside" in legend_texts


def test_without_a_gaussian_q_the_figures_show_the_draws_and_their_density_estimate(saved, tmp_path):
    draws = np.random.default_rng(1).normal(size=(150, 2, 3))
    plots.example_posteriors(tmp_path / "p.png", tmp_path / "q.png", _idata(draws), [0, 1], [2, 0])
    marginals, pair = saved
    assert all(not ax.texts for ax in marginals.axes) and "90% HDI [" in marginals.axes[0].get_title()
    legend_texts = [t.get_text() for legend in pair.legends for t in legend.get_texts()]
    assert legend_texts == ["150 draws from q(z|x)", *(f"kernel density estimate: {m} of the draws inside"
                                                       for m in ("39%", "86%", "99%"))]
    ax = pair.axes[0]  # each contour holds its share of the draws (within the kernel's smoothing)
    points = draws[:, 0, [2, 0]]
    for collection, share in zip([c for c in ax.collections if hasattr(c, "get_paths") and c.get_paths()][1:],
                                 (0.39, 0.86, 0.99)):
        from matplotlib.path import Path as MPath

        inside = np.zeros(len(points), dtype=bool)
        for path in collection.get_paths():
            for polygon in path.to_polygons():
                inside |= MPath(polygon).contains_points(points)
        assert abs(inside.mean() - share) < 0.05, (share, inside.mean())


@pytest.mark.integration
def test_a_csv_headers_names_label_the_features(saved, tmp_path):
    """Training on a CSV with a header keeps its feature columns' names (summary.json, and
    the heat maps' feature axis, where f0, f1, ... or column indices stood)."""
    import json

    from pyro_vae.cli import main

    names = [f"gene_{c}" for c in "abcdefghijkl"]
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(120, 12)).round(3)
    path = tmp_path / "table.csv"
    path.write_text(",".join(["kind", *names]) + "\n" + "\n".join(
        ",".join([str(i % 2), *map(str, row)]) for i, row in enumerate(rows)) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--model", "gaussian_per_feature", "--data", str(path), "--set", "data.labels=kind", "--set", "inference.schedule.epochs=1",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["data"]["feature_names"] == names
    reconstructions = saved[1]
    ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in reconstructions.axes if ax.get_xlabel() == "feature"]
    assert ticks == [names, names]  # inputs and reconstructions
    saved.clear()
    look = figures.Look((12,), feature_names=None)
    figures.image_panel(tmp_path / "t.png", [("x", torch.zeros(3, 12))], look, "numbered without names")
    assert [ax.get_xlabel() for ax in saved[0].axes][0] == "feature (column index)"
