"""benchmarks/reproduce.py, the reproduction table's script (REPRODUCTION.md): each row runs
end to end on a tiny budget and writes a result that reads back with the fields the table
needs. Nothing in the table is a target here: the figures are the script's, read back.

The default suite runs every row on tiny synthetic files laid out like ../shared/data; the
same rows on the real data (a few hundred images each) are marked slow."""

import gzip
import importlib.util
import json
import math
import struct
import sys

import numpy as np
import pytest

from helpers import ROOT, SHARED_DATA
from pyro_vae.runs import load_run

SPEC = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
reproduce = sys.modules["reproduce"] = importlib.util.module_from_spec(SPEC)  # dataclasses look it up
SPEC.loader.exec_module(reproduce)

ROWS = sorted(reproduce.ROWS)
DEFAULT_ROWS = (1, 5)  # a continuous and a semi-supervised row in the default suite; the others are slow


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny stand-ins for the shared files: the same names, formats and value ranges."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    binary = lambda n: (rng.random((n, 784)) < 0.2).astype(np.uint8)  # noqa: E731
    np.savez(root / "binarized_mnist.npz", train=binary(360), valid=binary(120))
    np.savez(root / "caltech101_silhouettes.npz", train=binary(360), valid=binary(120),
             train_labels=np.arange(360) % 101, valid_labels=np.arange(120) % 101)
    for folder, n, stems in (("mnist-idx", 420, ("train", "t10k")), ("fashion-mnist", 420, ("train",))):
        (root / folder).mkdir()
        for stem in stems:
            _write_idx(root / folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(root / folder / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def _check_row(row: int, out):
    """The fields the table reads, and the figure equal to what `pyro-vae evaluate` wrote."""
    record = json.loads((out / f"row{row}.json").read_text())
    with np.load(record["data_file"]) as prepared:
        held_out = len(prepared[reproduce.ROWS[row].split])
    spec = reproduce.ROWS[row]
    assert record["row"] == row and record["title"] == spec.title and record["source"] == spec.source
    assert record["protocol"] == spec.protocol and record["metric"] == spec.metric
    assert record["machine"] and record["date"] and record["wall_seconds"] > 0
    assert record["command"].startswith(f"python benchmarks/reproduce.py --row {row}")
    assert [c["cell"] for c in record["cells"]] == list(spec.cells)
    for cell in record["cells"]:
        assert cell["published"] == spec.cells[cell["cell"]].published
        assert cell["epochs"] == 1 and cell["status"] == "completed"
        assert cell["seconds_per_epoch"] > 0 and cell["wall_seconds"] > 0
        commands, features = cell["commands"], spec.cells[cell["cell"]].features
        if features is not None:  # M1+M2: M1 trained and its codes written first; the cell's model trains on them
            m1, encode, *commands = commands
            codes = out / f"row{row}" / f"{cell['cell']}_codes.npz"
            assert m1.startswith(f"pyro-vae train --model {features.model}") and encode.endswith(f"--out {codes}")
            assert f"--data {codes} " in commands[0]
            m1_latent = load_run(out / f"row{row}" / f"{cell['cell']}_m1").vae.latent_dim
            assert np.load(codes)["train"].shape[1] == m1_latent == 50
        assert commands[0].startswith(f"pyro-vae train --model {spec.cells[cell['cell']].model}")
        assert commands[1].startswith(f"pyro-vae evaluate {cell['run']} --split {spec.split}")
        evaluation = json.loads((out / f"row{row}" / cell["cell"] / "evaluation" / f"{spec.split}.json").read_text())
        assert cell["value"] == evaluation[spec.metric] and cell["n"] == evaluation["n"] == min(50, held_out)
        if spec.metric == "log_likelihood":
            assert cell["se"] == evaluation["log_likelihood_se"] > 0
            assert cell["bits_per_dim"] == pytest.approx(-evaluation["log_likelihood"] / (784 * math.log(2)))
        else:  # a binomial standard error over the test examples
            p = evaluation[spec.metric]
            assert cell["se"] == pytest.approx(math.sqrt(p * (1 - p) / cell["n"]))
            assert 0 <= cell["nmi"] <= 1
    if spec.metric == "log_likelihood" and len(spec.cells) > 1:  # the paired difference, recomputed by image
        first, other = (np.load(out / f"row{row}" / c / "evaluation" / f"{spec.split}.npz") for c in list(spec.cells)[:2])
        by_image = dict(zip(first["index"].tolist(), first["log_likelihood"].tolist()))
        d = [v - by_image[i] for i, v in zip(other["index"].tolist(), other["log_likelihood"].tolist())]
        assert record["paired"][0]["diff"] == pytest.approx(np.mean(d)) and record["paired"][0]["n"] == len(d)
        assert record["paired"][0]["se"] == pytest.approx(np.std(d, ddof=1) / math.sqrt(len(d)))
    else:
        assert record["paired"] == []
    return record


@pytest.mark.integration
@pytest.mark.parametrize("row", [row if row in DEFAULT_ROWS else pytest.param(row, marks=pytest.mark.slow) for row in ROWS])
def test_each_row_runs_end_to_end_on_a_tiny_budget(row, data_root, tmp_path):
    assert reproduce.main(["--row", str(row), "--out", str(tmp_path), "--tiny", "--data-root", str(data_root)]) == 0
    _check_row(row, tmp_path)


@pytest.mark.integration
def test_m1_m2_resumes_an_interrupted_m1_and_writes_its_codes_anew(data_root, tmp_path, capsys):
    base = ["--row", "5", "--variants", "m1_m2", "--out", str(tmp_path), "--tiny", "--data-root", str(data_root)]
    assert reproduce.main(base) == 0
    m1, codes = tmp_path / "row5" / "m1_m2_m1", tmp_path / "row5" / "m1_m2_codes.npz"
    summary = json.loads((m1 / "summary.json").read_text())
    (m1 / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))  # as a crash leaves it
    codes.write_bytes(b"stale")
    capsys.readouterr()
    assert reproduce.main([*base, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"$ pyro-vae train --resume {m1}" in out and f"$ pyro-vae encode {m1}" in out
    assert np.load(codes)["train"].shape[1] == 50


def test_the_shipped_specs_are_the_configurations_measured():
    """gmvae_vade, m2_on_codes and m2_mnist are exactly the shipped gmvae and m2_semisupervised
    with the overrides REPRODUCTION.md rows 6 and 5 were measured with (2026-12-07)."""
    from pyro_vae.spec import load_spec

    measured = {
        "gmvae_vade": ("gmvae", ["model.latent_dim=10", "model.likelihood.kind=bernoulli",
                                 "model.encoder.hidden=[500,500,2000]", "model.encoder.activation=relu",
                                 "model.decoder.hidden=[2000,500,500]", "model.decoder.activation=relu",
                                 "model.discrete.classifier.hidden=[500]", "model.discrete.init=vade",
                                 "model.discrete.covariance=full", "model.discrete.mixture_fits=10"]),
        "m2_on_codes": ("m2_semisupervised", ["model.latent_dim=50", "model.encoder.hidden=[500]",
                                              "model.decoder.hidden=[500]", "model.discrete.classifier.hidden=[500]"]),
        "m2_mnist": ("m2_semisupervised", ["model.latent_dim=50", "model.likelihood.kind=bernoulli",
                                           "model.encoder.hidden=[500]", "model.decoder.hidden=[500]",
                                           "model.discrete.classifier.hidden=[500]", "model.discrete.alpha=80000"]),
    }
    for shipped, (base, overrides) in measured.items():
        assert load_spec(model=shipped).model == load_spec(model=base, overrides=overrides).model, shipped
    assert load_spec(model="gmvae_vade").model != load_spec(model="gmvae").model


def test_the_splits_follow_each_protocol(data_root, tmp_path):
    """Row 5: the first 5/6 of the training files for training, the rest for validation, the
    official test files as the test split; row 6: every training image; row 8: a seeded
    50,000 / 5,000 / 5,000 cut (here 350 / 35 / 35) of the training files, disjoint."""
    train = reproduce.read_source(None, str(data_root / "mnist-idx" / "train-images-idx3-ubyte.gz"))
    t10k = reproduce.read_source(None, str(data_root / "mnist-idx" / "t10k-images-idx3-ubyte.gz"))
    x, tx = train.splits["train"].array.reshape(-1, 784), t10k.splits["train"].array.reshape(-1, 784)
    semi = np.load(reproduce.prepare_data("mnist_semi", data_root, tmp_path, tiny=False))
    assert np.array_equal(semi["train"], x[:350]) and np.array_equal(semi["valid"], x[350:])
    assert np.array_equal(semi["test"], tx) and np.array_equal(semi["test_labels"], np.arange(420) % 10)
    every = np.load(reproduce.prepare_data("mnist_all", data_root, tmp_path, tiny=False))
    assert np.array_equal(every["train"], x) and np.array_equal(every["test"], tx)
    fashion = np.load(reproduce.prepare_data("fashion", data_root, tmp_path, tiny=False))
    assert [len(fashion[s]) for s in ("train", "valid", "test")] == [350, 35, 35]
    source = reproduce.read_source(None, str(data_root / "fashion-mnist" / "train-images-idx3-ubyte.gz"))
    rows = {r.tobytes() for r in source.splits["train"].array.reshape(-1, 784)}
    seen = [r.tobytes() for s in ("train", "valid", "test") for r in fashion[s]]
    assert set(seen) == rows and len(seen) == len(rows)  # a partition of the training files


@pytest.mark.integration
def test_resume_trains_on_and_an_ended_run_is_only_evaluated(data_root, tmp_path):
    base = ["--row", "1", "--out", str(tmp_path), "--tiny", "--data-root", str(data_root)]
    assert reproduce.main(base) == 0
    run = tmp_path / "row1" / "standard"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    assert reproduce.main([*base, "--resume", "--epochs", "2"]) == 0
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3
    assert json.loads((tmp_path / "row1.json").read_text())["cells"][0]["epochs"] == 2
    weights = (run / "checkpoint.pt").read_bytes()
    assert reproduce.main([*base, "--resume", "--epochs", "2"]) == 0  # ended: evaluated again, not trained
    assert (run / "checkpoint.pt").read_bytes() == weights
    # without --resume an existing run is refused by `pyro-vae train`, and kept
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(base)
    assert stopped.value.code == 2 and (run / "checkpoint.pt").read_bytes() == weights


def test_bad_arguments_are_refused_in_one_line(data_root, tmp_path, capsys):
    assert reproduce.main(["--row", "7", "--out", str(tmp_path), "--variants", "nope", "--data-root", str(data_root)]) == 2
    assert reproduce.main(["--row", "1", "--out", str(tmp_path), "--dynamic", "--data-root", str(data_root)]) == 2
    assert reproduce.main(["--row", "1", "--out", str(tmp_path), "--data-root", str(tmp_path / "absent")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "row 7 has standard, vamp" in lines[0] and "row 3" in lines[1]
    assert "absent" in lines[2] and not list(tmp_path.glob("row*.json"))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data absent: {SHARED_DATA}")
@pytest.mark.parametrize("row", ROWS)
def test_each_row_runs_on_the_real_data_on_a_tiny_budget(row, tmp_path):
    assert reproduce.main(["--row", str(row), "--out", str(tmp_path), "--tiny"]) == 0
    _check_row(row, tmp_path)


BY_EPOCH_SPEC = importlib.util.spec_from_file_location("accuracy_by_epoch", ROOT / "benchmarks" / "accuracy_by_epoch.py")
accuracy_by_epoch = importlib.util.module_from_spec(BY_EPOCH_SPEC)
BY_EPOCH_SPEC.loader.exec_module(accuracy_by_epoch)


@pytest.mark.integration
@pytest.mark.parametrize("row", [5, 6])
def test_accuracy_by_epoch_reads_q_y_as_evaluate_does(row, data_root, tmp_path, capsys):
    """One line before training and one per epoch; the last equals what `pyro-vae evaluate`
    reports for the run's saved (last) weights on the same test images."""
    from pyro_vae.cli import main

    out = tmp_path / f"row{row}"
    lines = accuracy_by_epoch.main(["--row", str(row), "--epochs", "2", "--pretrain-epochs", "1", "--tiny",
                                    "--data-root", str(data_root), "--out", str(out)])
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    written = [json.loads(text) for text in (out / "accuracy_by_epoch.jsonl").read_text().splitlines()]
    assert written == lines
    assert main(["evaluate", str(out / "run"), "--split", "test", "--samples", "2", "--seed", "0"]) == 0
    evaluated = json.loads((out / "run" / "evaluation" / "test.json").read_text())
    for key in ("accuracy", "cluster_accuracy", "nmi"):
        assert lines[-1][key] == pytest.approx(evaluated[key], abs=1e-9), key
    if row == 5:  # --init continues from the run's weights: its first reading is the run's last
        again = accuracy_by_epoch.main(["--row", "5", "--epochs", "1", "--tiny", "--data-root", str(data_root),
                                        "--out", str(tmp_path / "continued"), "--init", str(out / "run"),
                                        "--set", "inference.optimizer.lr=3e-4"])
        assert again[0]["accuracy"] == lines[-1]["accuracy"] and again[0]["nmi"] == lines[-1]["nmi"]
        # --resume trains the run on and appends its readings, numbered by the run's epochs,
        # first the one a kill after the last checkpoint lost (here: epoch 2's line removed);
        # the resumed run equals one trained to 3 epochs at once
        jsonl = out / "accuracy_by_epoch.jsonl"
        jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines[:-1]))
        more = accuracy_by_epoch.main(["--row", "5", "--epochs", "3", "--resume", "--tiny", "--data-root",
                                       str(data_root), "--out", str(out)])
        assert [line["epoch"] for line in more] == [2, 3]
        assert (more[0]["accuracy"], more[0]["nmi"]) == (lines[-1]["accuracy"], lines[-1]["nmi"])
        assert [json.loads(text) for text in jsonl.read_text().splitlines()] == lines[:-1] + more
        stale = tmp_path / "at_once" / "accuracy_by_epoch.jsonl"  # a new run (no --resume) begins its file afresh
        stale.parent.mkdir()
        stale.write_text(jsonl.read_text())
        at_once = accuracy_by_epoch.main(["--row", "5", "--epochs", "3", "--tiny", "--data-root", str(data_root),
                                          "--out", str(tmp_path / "at_once")])
        assert [json.loads(text) for text in stale.read_text().splitlines()] == at_once
        assert at_once[-1]["accuracy"] == more[-1]["accuracy"] and at_once[-1]["nmi"] == pytest.approx(more[-1]["nmi"])
        # refused with exit 2 and one line, the readings kept: --set, another row's readings,
        # fewer epochs than the run's, no run
        refused = [["--epochs", "4", "--set", "inference.optimizer.lr=1"], ["--row", "6"], ["--epochs", "2"],
                   ["--out", str(tmp_path / "absent")]]
        capsys.readouterr()
        for extra in refused:
            with pytest.raises(SystemExit) as stopped:
                accuracy_by_epoch.main(["--row", "5", "--epochs", "4", "--resume", "--out", str(out), *extra])
            assert stopped.value.code == 2
        errors = [text for text in capsys.readouterr().err.splitlines() if "error" in text]
        assert len(errors) == 4 and "leave out --set" in errors[0] and "readings of row 5" in errors[1]
        assert "fewer than the run's 3" in errors[2] and "no such run directory" in errors[3]
        assert [json.loads(text) for text in jsonl.read_text().splitlines()] == lines[:-1] + more


def test_accuracy_by_epoch_interrupted_says_how_to_resume_in_one_line(tmp_path, monkeypatch, capsys):
    """SIGINT / SIGTERM during training (the trainer has written its checkpoint): exit 128 +
    signal and one line naming --resume, not a traceback."""
    from pyro_vae.errors import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted(2, 3, 7)

    monkeypatch.setattr(accuracy_by_epoch, "resume", interrupted)
    with pytest.raises(SystemExit) as stopped:
        accuracy_by_epoch.main(["--row", "5", "--epochs", "4", "--resume", "--out", str(tmp_path)])
    assert stopped.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "signal 2 in epoch 3 after step 7" in err[0] and "--resume" in err[0]
