"""Experiment tracking (``--track`` / ``[tracking]``), read back with the libraries' own
readers: MLflow's client and TensorBoard's event accumulator. The values logged must be the
run directory's own, training must not change, and a resumed run continues its tracking."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from helpers import assert_one_line_error
from pyro_vae.cli import main
from pyro_vae.spec import load_spec
from pyro_vae.tracking import flat_parameters
from pyro_vae.workflows.train import resume, train

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.integration  # every test here runs the command line or other processes

EPOCHS = 3


def _metrics(run):
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _mlflow_run(run):
    state = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=state["mlflow_uri"])
    return client, client.get_run(state["mlflow_run_id"])


def test_mlflow_holds_the_spec_every_metrics_row_the_figures_and_the_summary(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--track", "mlflow", "--set", f"inference.schedule.epochs={EPOCHS}", "--quiet",
                 "--out", str(out)]) == 0
    client, run = _mlflow_run(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads((out / "tracking.json").read_text())["mlflow_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    spec = load_spec(spec_file=str(out / "spec.toml"))
    assert run.data.params == {k: v for k, v in flat_parameters(spec.to_dict()).items()}
    assert run.data.params["model.latent_dim"] == str(spec.model.latent_dim)
    rows = _metrics(out)
    for key in ("train_elbo", "val_elbo", "kl", "seconds"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(int(r["epoch"]), pytest.approx(r[key], rel=1e-6)) for r in rows], key
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (out / "figures").glob("*.png")} and figures
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"spec.toml", "summary.json", "figures"}
    local = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(open(local).read()) == json.loads((out / "summary.json").read_text())


def test_tensorboard_holds_every_metrics_row_the_spec_and_the_figures(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--track", "tensorboard", "--set", f"inference.schedule.epochs={EPOCHS}", "--quiet",
                 "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    rows = _metrics(out)
    for key in ("train_elbo", "val_elbo", "kl", "reconstruction"):
        assert [(e.step, e.value) for e in events.Scalars(f"metrics/{key}")] == [
            (int(r["epoch"]), pytest.approx(r[key], rel=1e-6)) for r in rows], key
    spec_text = events.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert (out / "spec.toml").read_text() in spec_text
    summary_text = events.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.dumps(json.loads((out / "summary.json").read_text())["status"]) in summary_text
    assert {f"figures/{p.stem}" for p in (out / "figures").glob("*.png")} == set(events.Tags()["images"])


def test_tracking_changes_nothing_in_training(tmp_path):
    """The same numbers with and without a tracker; and a tracked run replaced (force) in the
    same process logs to a fresh store (mlflow/mlflow#4808 worked around: MLflow's cached
    engine of the removed database wrote "attempt to write a readonly database")."""
    runs = {}
    for track in (None, "mlflow", "tensorboard", "mlflow"):
        out = tmp_path / str(track)
        spec = load_spec(overrides=[f"inference.schedule.epochs={EPOCHS}", *([f"tracking.kind={track}"] if track else [])])
        train(spec, out, force=True, progress=False, log=lambda _: None)
        runs[track] = [(r["train_elbo"], r["val_elbo"], r["kl"]) for r in _metrics(out)]
    assert runs["mlflow"] == runs[None] and runs["tensorboard"] == runs[None]
    client, run = _mlflow_run(tmp_path / "mlflow")
    assert len(client.search_runs([run.info.experiment_id])) == 1 and run.info.status == "FINISHED"


@pytest.mark.parametrize("kind", ["mlflow", "tensorboard"])
def test_a_resumed_run_continues_its_tracking_with_every_epoch_once(tmp_path, kind):
    """Killed after epoch 2 (MLflow had sent epoch 1 only; TensorBoard had flushed nothing)
    and resumed: the same MLflow run, every epoch's row once in either."""
    out = tmp_path / "run"
    spec = load_spec(overrides=[f"inference.schedule.epochs={EPOCHS}", f"tracking.kind={kind}"])

    def killed(trainer):
        if trainer.state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, out, progress=False, log=lambda _: None, on_epoch=killed)
    if kind == "tensorboard":
        resume(out, progress=False, log=lambda _: None)
        events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("metrics/val_elbo")] == [
            (int(r["epoch"]), pytest.approx(r["val_elbo"], rel=1e-6)) for r in _metrics(out)]
        return
    first = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    resume(out, progress=False, log=lambda _: None)
    client, run = _mlflow_run(out)
    assert run.info.run_id == first and run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(first, "val_elbo")]
    assert sorted(history) == [(int(r["epoch"]), pytest.approx(r["val_elbo"], rel=1e-6)) for r in _metrics(out)]


def test_compare_tracks_every_cell_in_one_mlflow_store(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--vary", "model.latent_dim=4,8", "--seeds", "1", "--track", "mlflow", "--samples", "4",
                 "--limit", "20", "--set", "inference.schedule.epochs=1", "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cmp")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["latent_dim4-seed0", "latent_dim8-seed0"]
    assert sorted(r.data.params["model.latent_dim"] for r in runs) == ["4", "8"]


@pytest.mark.parametrize("kind, modules, package", [
    ("mlflow", ["mlflow", "mlflow.tracking"], "mlflow"),
    ("tensorboard", ["torch.utils.tensorboard"], "tensorboard"),
])
def test_a_missing_tracking_library_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch, kind, modules,
                                                                           package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    out = tmp_path / "run"
    code = main(["train", "--track", kind, "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, f"needs the {package} package", f"pyro-vae[{kind}]")
    assert not out.exists()
