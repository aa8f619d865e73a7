"""Evaluation: active units counted apart from the Monte Carlo noise of estimated posterior
means (unknown from one draw), the same count in evaluate and analyze, and `pyro-vae
evaluate` and `pyro-vae compare` through the CLI, checked against the files they write."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, run_cli, write_npz
from helpers import small_gaussian_vae as small
from pyro_vae.cli import main
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.infer.metrics import active_units, summarize
from pyro_vae.workflows.cells import estimator_axis
from pyro_vae.workflows.compare import columns, parse_estimators


@pytest.mark.integration
def test_evaluate_writes_summary_and_per_example_values(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--samples", "300", "--limit", "120"]) == 0
    out = capsys.readouterr().out
    assert "log p(x)" in out and "active units" in out
    summary = json.loads((digits_run / "evaluation" / "valid.json").read_text())
    per = np.load(digits_run / "evaluation" / "valid.npz")
    assert summary["n"] == 120 and summary["samples"] == 300 and len(per["log_likelihood"]) == 120
    ll = per["log_likelihood"].astype(np.float64)
    assert summary["log_likelihood"] == pytest.approx(ll.mean(), rel=1e-6)
    assert summary["log_likelihood_se"] == pytest.approx(ll.std(ddof=1) / math.sqrt(120), rel=1e-4)
    assert summary["elbo"] == pytest.approx(per["elbo"].mean(), rel=1e-5)
    assert summary["elbo"] == pytest.approx(summary["reconstruction"] - summary["kl"], abs=1e-4)
    assert (per["log_likelihood"] >= per["elbo"] - 1e-4).all()  # Jensen, example by example
    active = int((per["posterior_mean"].var(0, ddof=1) > 0.01).sum())
    assert summary["active_units"] == active
    # analytic KL per dimension (Gaussian posterior and prior) against the Monte Carlo total
    assert sum(summary["kl_per_dim"]) == pytest.approx(summary["kl"], abs=0.05 + 0.05 * abs(summary["kl"]))


@pytest.mark.integration
def test_evaluate_on_a_file_with_only_a_test_split(digits_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    path = write_npz(tmp_path / "test_only.npz", test=load_digits().data[:40].astype(np.float32))  # levels as stored
    code, _, stderr = run_cli("evaluate", digits_run, "--data", path, "--samples", "10")
    assert_one_line_error(code, stderr, "no 'valid' split", "test")
    assert main(["evaluate", str(digits_run), "--data", str(path), "--split", "test", "--samples", "50"]) == 0
    # named by the data: the run's own evaluation/test.json is not overwritten
    assert json.loads((digits_run / "evaluation" / "test_only-test.json").read_text())["n"] == 40


@pytest.mark.integration
def test_evaluate_errors(tmp_path, digits_run):
    code, _, stderr = run_cli("evaluate", tmp_path / "nope")
    assert_one_line_error(code, stderr, "no such run directory")
    code, _, stderr = run_cli("evaluate", digits_run, "--samples", "0")
    assert code == 2 and "positive whole number" in stderr and len(stderr.strip().splitlines()) == 1


def test_parse_estimators():
    assert parse_estimators("trace_elbo, iwae:k=5,renyi:alpha=0.5:k=3") == [
        ("trace_elbo", {"kind": "trace_elbo"}),
        ("iwae:k=5", {"kind": "iwae", "k": 5}),
        ("renyi:alpha=0.5:k=3", {"kind": "renyi", "alpha": 0.5, "k": 3}),
    ]


@pytest.mark.integration
def test_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--estimators", "trace_elbo,iwae", "--seeds", "2", "--out", str(out), "--samples", "40",
            "--limit", "60", "--snr-repeats", "5", "--snr-k", "1,4", "--set", "inference.schedule.epochs=2"]
    assert main(args) == 0
    assert "diff vs trace_elbo" in capsys.readouterr().out
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == columns([estimator_axis("trace_elbo,iwae")])
    assert list(rows[0])[:3] == ["cell", "inference.estimator", "seed"]
    assert [(r["cell"], r["seed"]) for r in rows] == [("trace_elbo", "0"), ("iwae", "0"), ("trace_elbo", "1"), ("iwae", "1")]
    for row in rows:
        if row["cell"] == "trace_elbo":
            assert float(row["diff_vs_reference"]) == 0.0
            continue
        # the paired difference, recomputed from the two runs' per-example files
        mine = np.load(out / row["run"] / "evaluation" / "valid.npz")["log_likelihood"].astype(np.float64)
        ref_run = next(r["run"] for r in rows if r["cell"] == "trace_elbo" and r["seed"] == row["seed"])
        ref = np.load(out / ref_run / "evaluation" / "valid.npz")["log_likelihood"].astype(np.float64)
        diff = mine - ref
        assert float(row["diff_vs_reference"]) == pytest.approx(diff.mean(), rel=1e-6, abs=1e-9)
        assert float(row["diff_se"]) == pytest.approx(diff.std(ddof=1) / math.sqrt(len(diff)), rel=1e-5)
        assert float(row["log_likelihood"]) == pytest.approx(mine.mean(), rel=1e-6)
        assert len(diff) == 60
    for row in rows:
        assert float(row["seconds_per_step"]) > 0 and float(row["snr_encoder"]) > 0 and float(row["snr_decoder"]) > 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["settings"]["reference"] == "trace_elbo" and "not leave-one-out" in report["note"]
    # the digits' held-out split is drawn with each seed: independent examples, SE_s combined as independent
    ses = [float(r["diff_se"]) for r in rows if r["cell"] == "iwae"]
    assert report["summary"]["iwae"]["diff_se_examples"] == pytest.approx(math.sqrt(sum(se ** 2 for se in ses)) / 2, rel=1e-5)
    assert {(r["estimator"], r["k"]) for r in report["snr_vs_k"]} == {("iwae", 1), ("iwae", 4)}
    assert [p["epoch"] for p in report["snr_points"][0]["points"]] == [0, 1, 2]
    for name in ("comparison_loglik.png", "comparison_curves.png", "comparison_snr.png"):
        assert (out / name).stat().st_size > 10_000


def test_estimators_start_from_the_same_weights_and_data_order():
    import torch

    from pyro_vae.workflows.train import train
    from pyro_vae.spec import load_spec

    seen = {}
    for kind in ("trace_elbo", "iwae_dreg"):
        spec = load_spec(overrides=[f"inference.estimator.kind={kind}", "inference.schedule.epochs=1", "inference.schedule.seed=7"])
        state = {}

        def before(trainer, state=state):
            state["weights"] = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
            generator = torch.Generator()
            generator.set_state(trainer.data_rng.get_state())  # the first epoch's order, drawn ahead
            state["order"] = torch.randperm(trainer.num_data, generator=generator)

        train(spec, progress=False, log=lambda _: None, before=before)
        seen[kind] = state
    a, b = seen["trace_elbo"], seen["iwae_dreg"]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert torch.equal(a["order"], b["order"])


@pytest.mark.integration
@pytest.mark.parametrize(
    "estimators, fragment",
    [("trace_elbo,iwae:k", "expected kind:key=value"), ("trace_elbo,nope", "unknown estimator kind 'nope'"),
     ("iwae:k=0", "--estimators iwae:k=0"), ("trace_elbo,trace_elbo", "distinct")],
)
def test_compare_bad_estimators(tmp_path, capsys, estimators, fragment):
    code = main(["compare", "--estimators", estimators, "--out", str(tmp_path / "c")])
    assert_one_line_error(code, capsys.readouterr().err, fragment)
    assert not (tmp_path / "c").exists()


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
