"""`compare` along any axis of the spec: cells, labels, common initial weights for the parts
the cells share, comparison.md read back, errors, and an interrupted comparison resumed
to the same numbers as one never interrupted."""

from __future__ import annotations

import csv
import importlib
import json
import math

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error
from pyro_vae.cli import main
from pyro_vae.errors import SpecError
from pyro_vae.model import build_vae
from pyro_vae.spec import SLOTS, load_spec
from pyro_vae.workflows.cells import parse_axis, plan_cells, split_values
from pyro_vae.workflows.train import check

compare_module = importlib.import_module("pyro_vae.workflows.compare")  # the module, not the function the package exports
TINY = ["inference.schedule.epochs=2", "inference.schedule.batch_size=256"]


# --- cells -------------------------------------------------------------------------------


def test_values_split_at_top_level_commas_only():
    assert split_values("[300,300],[500], 7") == ["[300,300]", "[500]", "7"]
    assert parse_axis("model.encoder.hidden=[300,300],[500]").values == ("[300,300]", "[500]")


def test_cross_product_and_zip_give_the_cells_with_labels_of_the_values_that_differ():
    base = load_spec()
    axes = [parse_axis("model.posterior.kind=diagonal_normal,iaf"), parse_axis("inference.estimator=trace_elbo,iwae:k=5"),
            parse_axis("model.latent_dim=8")]
    cells = plan_cells(base, axes)
    assert [c.label for c in cells] == ["diagonal_normal+trace_elbo", "diagonal_normal+iwae:k=5", "iaf+trace_elbo",
                                        "iaf+iwae:k=5"]
    iaf_iwae = cells[3].spec
    assert iaf_iwae.model.posterior["kind"] == "iaf" and iaf_iwae.model.latent_dim == 8
    assert iaf_iwae.inference.estimator["kind"] == "iwae" and iaf_iwae.inference.estimator["k"] == 5
    zipped = plan_cells(base, axes[:2], zip_axes=True)
    assert [(c.values["model.posterior.kind"], c.values["inference.estimator"]) for c in zipped] == [
        ("diagonal_normal", "trace_elbo"), ("iaf", "iwae:k=5")]
    # zipped, a value may recur beside different ones (benchmarks/priors.py)
    pairs = plan_cells(base, [parse_axis("model.prior=standard_normal,vamp:components=5,standard_normal"),
                              parse_axis("model.posterior=diagonal_normal,diagonal_normal,iaf:steps=1")], zip_axes=True)
    assert [c.label for c in pairs] == ["standard_normal+diagonal_normal", "vamp:components=5+diagonal_normal",
                                        "standard_normal+iaf:steps=1"]
    assert pairs[2].spec.model.posterior["steps"] == 1 and pairs[1].spec.model.prior["components"] == 5
    scalar = plan_cells(base, [parse_axis("model.latent_dim=4,8")])
    assert [c.label for c in scalar] == ["latent_dim=4", "latent_dim=8"]
    assert [c.spec.model.latent_dim for c in scalar] == [4, 8]


def test_a_slot_value_replaces_the_table_and_a_new_kind_drops_the_old_kinds_settings():
    base = load_spec(overrides=["model.prior.kind=mixture", "model.prior.components=7"])
    cells = plan_cells(base, [parse_axis("model.prior=mixture:components=3,vamp:components=5")])
    assert cells[0].spec.model.prior["components"] == 3 and cells[1].spec.model.prior["kind"] == "vamp"
    assert cells[1].spec.model.prior["components"] == 5
    by_kind = plan_cells(base, [parse_axis("model.prior.kind=mixture,standard_normal")])
    assert by_kind[0].spec.model.prior["components"] == 7  # the same kind keeps its settings
    assert "components" not in by_kind[1].spec.model.prior


@pytest.mark.parametrize("axes, zip_axes, fragment", [
    (["model.prior.kind=standard_normal,nope"], False, "$vary nope: model.prior.kind: unknown prior kind 'nope'"),
    (["model.latent_dim=4,4"], False, "distinct values"),
    (["model.latent_dim=4,8", "model.posterior.kind=iaf"], True, "$zip pairs the values element-wise"),
    (["model.latent_dim=4", "model.latent_dim=8"], False, "model.latent_dim is given twice"),
    (["latent_dim"], False, "expected KEY=VALUE,VALUE"),
])
def test_bad_axes_are_refused_before_anything_is_trained(axes, zip_axes, fragment):
    with pytest.raises(SpecError) as caught:
        plan_cells(load_spec(), [parse_axis(a) for a in axes], zip_axes)
    assert fragment in caught.value.template


@pytest.mark.integration
@pytest.mark.parametrize("args, fragment", [
    (["--vary", "model.prior.kind=standard_normal,nope"], "--vary nope: model.prior.kind: unknown prior kind 'nope'"),
    (["--vary", "model.latent_dim=4,8", "--vary", "model.posterior.kind=iaf", "--zip"], "--zip pairs"),
    (["--vary", "model.latent_dim=4,8", "--reference", "latent_dim=5"], "--reference 'latent_dim=5' is not among"),
    ([], "nothing to compare: give --vary"),
])
def test_compare_command_line_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "c"
    code = main(["compare", *args, "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, fragment)
    assert not out.exists()


# --- common random numbers ----------------------------------------------------------------


def _initial(overrides, seed=3):
    vae, _ = check(load_spec(overrides=[*overrides, f"inference.schedule.seed={seed}"]))
    return {k: v.clone() for k, v in vae.state_dict().items()}


def test_every_prior_starts_with_the_same_encoder_and_decoder():
    reference = _initial([])
    for kind in SLOTS["prior"].names():
        weights = _initial([f"model.prior.kind={kind}"])
        shared = [k for k in reference if k.startswith(("encoder.", "decoder.", "likelihood."))]
        assert shared and all(torch.equal(weights[k], reference[k]) for k in shared), kind
    assert not torch.equal(_initial([], seed=4)["encoder.net.0.weight"], reference["encoder.net.0.weight"])


def test_every_posterior_starts_with_the_same_decoder_and_encoder_hidden_layers():
    reference = _initial([])
    for kind in SLOTS["posterior"].names():
        weights = _initial([f"model.posterior.kind={kind}"])
        decoder = [k for k in reference if k.startswith("decoder.")]
        assert all(torch.equal(weights[k], reference[k]) for k in decoder), kind
        # the hidden layer is shared; the output layer's size is the posterior's own
        assert torch.equal(weights["encoder.net.0.weight"], reference["encoder.net.0.weight"]), kind


def test_every_likelihood_starts_with_the_same_encoder_and_decoder_hidden_layer():
    """On data every likelihood accepts (counts 0..1), each likelihood's decoder output is its
    own, but the encoder and the decoder's hidden layer are the same."""
    torch.manual_seed(0)
    weights = {}
    for kind in SLOTS["likelihood"].names():
        torch.manual_seed(5)
        spec = load_spec(overrides=[f"model.likelihood.kind={kind}", "model.encoder_input=identity"])
        vae = build_vae(spec.model, (6,), 10)
        weights[kind] = {k: v.clone() for k, v in vae.state_dict().items()}
    first = weights["gaussian"]
    for kind, mine in weights.items():
        for key in ("encoder.net.0.weight", "encoder.net.2.weight", "decoder.net.0.weight"):
            assert torch.equal(mine[key], first[key]), (kind, key)


# --- end to end ---------------------------------------------------------------------------


def _rows(out):
    with open(out / "comparison.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_comparison_of_priors_writes_tables_that_read_back(tmp_path, capsys):
    out = tmp_path / "priors"
    assert main(["compare", "--vary", "model.prior.kind=standard_normal,vamp", "--seeds", "2", "--samples", "8",
                 "--limit", "40", "--reference", "vamp", "--out", str(out), *sum((["--set", o] for o in TINY), [])]) == 0
    printed = capsys.readouterr()
    assert "2 cell(s) x 2 seed(s) = 4 runs" in printed.out and "about" in printed.out and "[4/4]" in printed.out
    rows = _rows(out)
    assert [(r["cell"], r["model.prior.kind"], r["seed"]) for r in rows] == [
        ("standard_normal", "standard_normal", "0"), ("vamp", "vamp", "0"), ("standard_normal", "standard_normal", "1"),
        ("vamp", "vamp", "1")]
    assert all(math.isnan(float(r["snr_encoder"])) for r in rows)  # SNR only where the estimator or posterior varies
    assert not (out / "comparison_snr.png").exists() and (out / "comparison_loglik.png").stat().st_size > 10_000
    diffs = np.array([float(r["diff_vs_reference"]) for r in rows if r["cell"] == "standard_normal"])
    for r in rows:  # paired against vamp, recomputed from the per-example files
        mine = np.load(out / r["run"] / "evaluation" / "valid.npz")["log_likelihood"].astype(np.float64)
        ref = np.load(out / f"runs/vamp-seed{r['seed']}" / "evaluation" / "valid.npz")["log_likelihood"].astype(np.float64)
        assert float(r["diff_vs_reference"]) == pytest.approx((mine - ref).mean(), rel=1e-6, abs=1e-9)
    table = (out / "comparison.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith("| `standard_normal`"))
    se = diffs.std(ddof=1) / math.sqrt(2)
    assert f"{diffs.mean():+.2f} ± {se:.2f}".replace("-", "−") in line
    assert "| `vamp` | vamp |" in table and "| reference |" in table and "K = 8 on the same 40 valid examples" in table
    report = json.loads((out / "comparison.json").read_text())
    assert report["settings"]["reference"] == "vamp" and report["settings"]["snr"] is False


@pytest.mark.integration
def test_an_interrupted_comparison_continues_to_the_numbers_of_one_never_interrupted(tmp_path, monkeypatch):
    """A comparison killed in its second cell's training (after a checkpoint) and run again
    keeps the first cell, resumes the second from its checkpoint and ends with the same
    per-example log p(x) and SNR points as a comparison that ran through."""
    design = compare_module.Design(vary=["model.posterior.kind=diagonal_normal,iaf"], seeds=1)
    args = dict(overrides=["inference.schedule.epochs=3", "inference.schedule.batch_size=256"],
                evaluation=compare_module.EvaluationSettings(samples=8, limit=30),
                snr=compare_module.SNRSettings(repeats=4, k=()), log=lambda _: None)
    whole = compare_module.compare(design, out=tmp_path / "whole", **args).report

    real_train = compare_module.train

    def killed_in_the_second_epoch(spec, out, **kwargs):
        if "iaf" not in str(out):
            return real_train(spec, out, **kwargs)

        def die(trainer):
            kwargs["on_epoch"](trainer)
            if trainer.state.epoch == 2:
                raise KeyboardInterrupt

        return real_train(spec, out, **{**kwargs, "on_epoch": die})

    monkeypatch.setattr(compare_module, "train", killed_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        compare_module.compare(design, out=tmp_path / "cut", **args)
    cut = tmp_path / "cut"
    assert json.loads((cut / "runs/iaf-seed0/summary.json").read_text())["epochs"] == 2
    assert (cut / "runs/diagonal_normal-seed0/comparison_done.json").is_file()
    monkeypatch.setattr(compare_module, "train", real_train)
    said = []
    again = compare_module.compare(design, out=cut, **{**args, "log": said.append}).report
    assert any("done before, kept" in s for s in said) and any("resuming its training" in s for s in said)
    for cell in ("diagonal_normal", "iaf"):
        a = np.load(tmp_path / f"whole/runs/{cell}-seed0/evaluation/valid.npz")["log_likelihood"]
        b = np.load(cut / f"runs/{cell}-seed0/evaluation/valid.npz")["log_likelihood"]
        assert np.array_equal(a, b), cell
    assert again["snr_points"] == whole["snr_points"]
    assert [p["epoch"] for p in again["snr_points"][1]["points"]] == [0, 2, 3]


@pytest.mark.integration
def test_a_different_comparison_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "c"
    (out / "runs").mkdir(parents=True)
    (out / "comparison_plan.json").write_text(json.dumps({"settings": {}, "specs": {}}))
    code = main(["compare", "--vary", "model.latent_dim=4,8", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "holds a comparison with other cells or settings", "--force")
    assert (out / "comparison_plan.json").read_text() == json.dumps({"settings": {}, "specs": {}})
