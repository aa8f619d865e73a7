"""The checkpoint format (runs.CHECKPOINT_FORMAT): every older format loads, migrated in
memory, to the same weights and predictions; a newer one is refused in one line.

``data/format1_run`` was written by pyro-vae at commit 970e1d9 (2026-11-22), the last
layout without ``preprocessing`` and a count likelihood's ``mean_library``: ``pyro-vae
train --model models/count_nb.toml --set inference.schedule.epochs=1 --set
data.normalize=false --set model.latent_dim=2 --set model.encoder.hidden=[4] --set
model.decoder.hidden=[4]``.
"""

import shutil
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.model import build_vae
from pyro_vae.errors import RunError
from pyro_vae.runs import (CHECKPOINT_FORMAT, load_checkpoint, load_run, read_spec, record_outputs,
                            save_checkpoint, sha256_file)

FORMAT_1 = Path(__file__).parent / "data" / "format1_run"


def _predictions(vae) -> torch.Tensor:
    z = torch.linspace(-2, 2, 10).reshape(5, 2)
    with torch.no_grad():
        return vae.decode_mean(z)


def _rebuilt(run: Path, raw: dict, weights: dict):
    """The run's model built by hand from its spec, the weights loaded strictly."""
    vae = build_vae(read_spec(run).model, tuple(raw["data_shape"]), raw["num_data"])
    vae.load_state_dict(weights)
    return vae.eval()


def test_a_format_1_run_loads_to_its_weights_and_predictions():
    raw = torch.load(FORMAT_1 / "checkpoint.pt", weights_only=True)
    assert raw["format"] == 1 and "preprocessing" not in raw and "likelihood.mean_library" not in raw["weights"]
    run = load_run(FORMAT_1)
    assert run.checkpoint["format"] == CHECKPOINT_FORMAT == 2
    assert run.preprocessing is None  # prepared as its spec says (normalize = false: as stored)
    state = run.vae.state_dict()
    for name, value in raw["weights"].items():
        assert torch.equal(state[name], value), name
    assert state["likelihood.mean_library"].item() == 1.0  # the model's initial value
    expected = _rebuilt(FORMAT_1, raw, {**raw["weights"], "likelihood.mean_library": torch.tensor(1.0)})
    assert torch.equal(_predictions(run.vae), _predictions(expected))
    assert run.checkpoint["training"]["world_size"] == 1


def test_the_migrated_checkpoint_written_as_the_current_format_loads_the_same(tmp_path):
    """Written again from the loaded model (every weight, the ones the old file lacked
    included), a migrated checkpoint is a format-2 file that loads strictly, the same."""
    migrated, old = load_checkpoint(FORMAT_1 / "checkpoint.pt"), load_run(FORMAT_1)
    run = tmp_path / "run"
    shutil.copytree(FORMAT_1, run)
    save_checkpoint(run / "checkpoint.pt", {**migrated, "weights": old.vae.state_dict()})
    written = torch.load(run / "checkpoint.pt", weights_only=True)
    assert written["format"] == CHECKPOINT_FORMAT and "lacks" not in written
    assert torch.equal(_predictions(load_run(run).vae), _predictions(old.vae))


@pytest.mark.parametrize("lacks", [[""], ["weight", "bias"], "c", 5])
def test_a_files_own_list_of_lacking_weights_is_never_trusted(lacks, tmp_path, digits_run):
    """``lacks`` is what a migration says an older format lacked: a file that names it
    itself (to load untrained weights without a word) is refused for its missing weights."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    current = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    weights = {k: v for k, v in current["weights"].items() if "decoder" not in k}
    torch.save({**current, "weights": weights, "lacks": lacks}, run / "checkpoint.pt")  # past save_checkpoint's filter
    record_outputs(run, [], checkpoint_sha256=sha256_file(run / "checkpoint.pt"))
    with pytest.raises(RunError, match="missing"):
        load_run(run)


def test_format_1_without_world_size_and_format_2_files_of_todays_layout(tmp_path, digits_run):
    """A format-1 file of the layout before 2026-11-22 lacked training.world_size (one
    process); one written since holds everything format 2 does."""
    current = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    assert current["format"] == CHECKPOINT_FORMAT and "world_size" in current["training"]
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    old = {**current, "format": 1, "training": {k: v for k, v in current["training"].items() if k != "world_size"}}
    save_checkpoint(run / "checkpoint.pt", old)
    loaded = load_run(run)
    assert loaded.checkpoint["training"]["world_size"] == 1
    assert torch.equal(_predictions_of(loaded), _predictions_of(load_run(digits_run)))


def _predictions_of(run):
    with torch.no_grad():
        return run.vae.decode_mean(torch.linspace(-2, 2, 5 * run.vae.latent_dim).reshape(5, -1))


def test_a_newer_format_is_refused_in_one_line_naming_it_and_the_fix(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FORMAT_1, run)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    save_checkpoint(run / "checkpoint.pt", {**checkpoint, "format": CHECKPOINT_FORMAT + 1})
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"checkpoint format {CHECKPOINT_FORMAT + 1}, newer than this pyro-vae reads" in err
    assert "pip install --upgrade pyro-vae" in err


def test_a_format_1_count_run_without_mean_library_resumes_as_if_never_stopped(tmp_path):
    """``--resume`` of a format-1 file that lacks ``mean_library`` in both weight sets (the
    layout before 2026-11-22) continues to the weights an uninterrupted run reaches."""
    small = ["--model", "count_nb", "--set", "data.normalize=false", "--set", "model.latent_dim=2",
             "--set", "model.encoder.hidden=[4]", "--set", "model.decoder.hidden=[4]", "--quiet"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["train", *small, "--set", "inference.schedule.epochs=2", "--out", str(whole)]) == 0
    assert main(["train", *small, "--set", "inference.schedule.epochs=1", "--out", str(stopped)]) == 0
    checkpoint = torch.load(stopped / "checkpoint.pt", weights_only=True)
    lacked = "likelihood.mean_library"
    assert lacked in checkpoint["weights"]
    checkpoint["format"] = 1
    for weights in (checkpoint["weights"], checkpoint["training"]["last_weights"]):  # may be one dict, saved once
        weights.pop(lacked, None)
    assert lacked not in checkpoint["training"]["last_weights"]
    save_checkpoint(stopped / "checkpoint.pt", checkpoint)
    assert main(["train", "--resume", str(stopped), "--set", "inference.schedule.epochs=2", "--quiet"]) == 0
    reached = torch.load(stopped / "checkpoint.pt", weights_only=True)["weights"]
    expected = torch.load(whole / "checkpoint.pt", weights_only=True)["weights"]
    assert reached.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(reached[name], value), name
