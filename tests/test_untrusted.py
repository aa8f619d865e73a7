"""A run directory or a spec from someone else: nothing in it runs code, writes
outside the run or calls out unless the user says so; --force deletes only what pyro-vae
wrote; memory is refused before it is spent; every bad case is one line and exit 2."""

import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error
from pyro_vae.cli import main
from pyro_vae.errors import RunError
from pyro_vae.runs import MANIFEST, load_checkpoint, load_run, read_manifest, sha256_file
from pyro_vae.workflows import memory

pytestmark = pytest.mark.integration  # every test here runs the command line or other processes

SMALL = ["--model", "binomial", "--set", "model.latent_dim=2", "--set", "inference.schedule.epochs=1", "--quiet"]  # N(0, I) prior
FEW = ["--samples", "5", "--limit", "10"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("untrusted") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture
def received(small_run, tmp_path):
    """A copy of the small run, as a collaborator would send it."""
    run = tmp_path / "received"
    shutil.copytree(small_run, run)
    return run


def _cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def _set_spec(run: Path, old: str, new: str) -> None:
    text = (run / "spec.toml").read_text()
    assert old in text
    (run / "spec.toml").write_text(text.replace(old, new, 1))


PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from pyro_vae.model.priors import StandardNormalPrior as Planted
"""


def _plant(run: Path, tmp_path: Path, name: str) -> Path:
    marker = tmp_path / f"{name}.ran"
    (run / f"{name}.py").write_text(PLANTED.format(marker=str(marker)))
    _set_spec(run, 'kind = "standard_normal"', f'kind = "{name}:Planted"')
    return marker


# --- code runs only when the user says so ---------------------------------------------------


def test_a_module_planted_in_the_run_is_never_imported(received, tmp_path, capsys, monkeypatch):
    marker = _plant(received, tmp_path, "planted_issue30")
    monkeypatch.chdir(received)  # cd RUN && pyro-vae evaluate .
    monkeypatch.setattr(sys, "path", [*sys.path, ""])  # as python -m puts the working directory first
    for trust in ([], ["--trust-code"]):  # not even when trusted
        code, err = _cli(capsys, "evaluate", ".", *FEW, *trust)
        assert_one_line_error(code, err, "module 'planted_issue30'", "imported from the run directory",
                              "never imports code shipped inside a run")
    code, err = _cli(capsys, "train", "--check", "--spec", "spec.toml", "--trust-code")
    assert_one_line_error(code, err, "imported from the run directory")
    assert not marker.exists() and "planted_issue30" not in sys.modules
    assert not (received / "evaluation").exists()


def test_a_spec_files_module_is_imported_only_with_trust_code(received, tmp_path, capsys, monkeypatch):
    marker = _plant(received, tmp_path, "planted_spec_issue30")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(received / "planted_spec_issue30.py", elsewhere / "planted_spec_issue30.py")
    monkeypatch.chdir(elsewhere)  # the module beside the user, not in the run
    for args in (["train", "--check", "--spec", received / "spec.toml"], ["evaluate", received, *FEW],
                 ["sample", received, "--n", "2"], ["analyze", received, *FEW],
                 ["encode", received, "--out", tmp_path / "codes.npz"], ["train", "--resume", received]):
        code, err = _cli(capsys, *args)
        assert_one_line_error(code, err, "would import and run module 'planted_spec_issue30'", "--trust-code")
    assert not marker.exists()
    code, err = _cli(capsys, "train", "--check", "--spec", received / "spec.toml", "--trust-code")
    assert code == 0, err
    assert marker.read_text() == "ran"  # the user said so


def test_a_kind_given_on_the_command_line_is_the_users_own(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--check", "--set", "model.prior.kind=pyro_vae.model.priors:StandardNormalPrior",
                     "--set", "model.posterior.kind=user_components:PointPosterior")
    assert code == 0, err


@pytest.mark.parametrize("kind, fragment", [
    ("os:_exit", "not a class"), ("builtins:print", "not a class"), ("code:interact", "not a class"),
    ("os:path", "is a module, not a class"), ("..:Y", "not an import path"), (".x:Y", "not an import path"),
    ("pyro_vae.model.likelihoods:BernoulliLikelihood", "not a prior"), ("os:", "not an import path"),
])
def test_a_hostile_kind_is_refused_before_anything_is_called(capsys, kind, fragment):
    code, err = _cli(capsys, "train", "--check", "--set", f"model.prior.kind={kind}")
    assert_one_line_error(code, err, fragment)  # and the process is still here to assert it


@pytest.mark.parametrize("flag", ["--set", "--model", "--spec"])
def test_deeply_nested_toml_is_one_line(tmp_path, capsys, flag):
    deep = "[" * 3000 + "]" * 3000
    if flag == "--set":
        args = ["--set", f"model.encoder.hidden={deep}"]
    else:
        path = tmp_path / "deep.toml"
        path.write_text(f"[model]\nlatent_dim = {deep}\n")
        args = [flag, path]
    code, err = _cli(capsys, "train", "--check", *args)
    assert_one_line_error(code, err, "nested too deeply")


# --- tracking from a received spec ------------------------------------------------------------


@pytest.mark.parametrize("table, key", [
    ('kind = "tensorboard"\nlog_dir = "{outside}"', "log_dir"),
    ('kind = "mlflow"\nuri = "http://127.0.0.1:9/"', "uri"),
])
def test_a_received_tracking_table_sends_nothing_outside(received, tmp_path, capsys, table, key,
                                                         monkeypatch):
    outside = tmp_path / "outside_tracking"
    with open(received / "spec.toml", "a") as f:
        f.write("\n[tracking]\n" + table.format(outside=outside) + "\n")
    code, err = _cli(capsys, "evaluate", received, *FEW)
    assert code == 0, err
    code, err = _cli(capsys, "sample", received, "--n", "2")
    assert code == 0, err
    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: connections.append(address))
    code, err = _cli(capsys, "train", "--resume", received, "--set", "inference.schedule.epochs=2")
    assert_one_line_error(code, err, "outside the run directory", f"--set tracking.{key}=")
    assert connections == []  # refused before any connection is tried
    assert not outside.exists()


@pytest.mark.parametrize("kind, store", [("tensorboard", "tensorboard"), ("mlflow", "mlflow.db"),
                                         ("mlflow", "mlartifacts")])
def test_a_planted_link_for_a_trackers_store_is_refused_on_resume(received, tmp_path, capsys, kind, store):
    """With the store under the run (no log_dir, no uri), a link planted in its place would
    take the events or the database outside the run: refused before training, nothing written."""
    pytest.importorskip(kind)
    outside = tmp_path / "outside_store"
    if store.endswith(".db"):
        (received / store).symlink_to(outside)  # dangling: sqlite would create it
    else:
        outside.mkdir()
        (received / store).symlink_to(outside)
    with open(received / "spec.toml", "a") as f:
        f.write(f'\n[tracking]\nkind = "{kind}"\n')
    before = (received / "metrics.csv").read_text()
    code, err = _cli(capsys, "train", "--resume", received, "--set", "inference.schedule.epochs=2")
    assert_one_line_error(code, err, f"{received / store}", "symbolic link")
    assert not outside.exists() or list(outside.iterdir()) == []
    assert (received / "metrics.csv").read_text() == before  # refused before any epoch


def test_a_planted_figures_link_is_refused_before_resumed_training(received, tmp_path, capsys):
    outside = tmp_path / "outside_figures"
    outside.mkdir()
    shutil.rmtree(received / "figures", ignore_errors=True)
    (received / "figures").symlink_to(outside)
    before = (received / "metrics.csv").read_text()
    code, err = _cli(capsys, "train", "--resume", received, "--set", "inference.schedule.epochs=2")
    assert_one_line_error(code, err, f"{received / 'figures'}", "symbolic link")
    assert (received / "metrics.csv").read_text() == before and list(outside.iterdir()) == []


# --- outputs stay inside the run ------------------------------------------------------------------


@pytest.mark.parametrize("folder, args", [
    ("evaluation", ["evaluate", "{run}", *FEW]), ("samples", ["sample", "{run}", "--n", "2"]),
    ("analysis", ["analyze", "{run}", *FEW, "--draws", "5"]),
])
@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_planted_link_or_file_where_a_run_writes_a_folder_is_refused(received, tmp_path, capsys, folder, args,
                                                                        planted):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(received / folder, ignore_errors=True)
    if planted == "symlink":
        (received / folder).symlink_to(outside)
    else:
        (received / folder).write_text("mine")
    code, err = _cli(capsys, *[a.format(run=received) for a in args])
    assert_one_line_error(code, err, f"{received / folder}", "symbolic link" if planted == "symlink" else "not a folder")
    assert list(outside.iterdir()) == []
    if planted == "file":
        assert (received / folder).read_text() == "mine"


def test_a_link_planted_under_a_temporary_name_is_not_written_through(received, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (received / "evaluation").mkdir(exist_ok=True)
    for pid in range(os.getpid(), os.getpid() + 1):
        (received / "evaluation" / f".valid.json.tmp{pid}").symlink_to(victim)
    code, err = _cli(capsys, "evaluate", received, *FEW)
    assert code == 0, err
    assert victim.read_text() == "keep"


# --- checkpoint integrity ----------------------------------------------------------------------


def test_the_checkpoints_sha256_is_recorded_and_checked(received, capsys):
    manifest = read_manifest(received, "run")
    assert manifest["checkpoint_sha256"] == [sha256_file(received / "checkpoint.pt")]
    data = bytearray((received / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: torch would still load it
    (received / "checkpoint.pt").write_bytes(bytes(data))
    for args in (["evaluate", received, *FEW], ["sample", received, "--n", "2"], ["train", "--resume", received]):
        code, err = _cli(capsys, *args)
        assert_one_line_error(code, err, "corrupt: its SHA-256 is not the one recorded")


def _rewrite_checkpoint(run: Path, change) -> None:
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    change(checkpoint)
    torch.save(checkpoint, run / "checkpoint.pt")
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["checkpoint_sha256"] = [sha256_file(run / "checkpoint.pt")]
    (run / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_naming_their_epoch(received, tmp_path, capsys, value):
    def poison(checkpoint):
        name = next(iter(checkpoint["weights"]))
        checkpoint["weights"][name] = torch.full_like(checkpoint["weights"][name], value)

    _rewrite_checkpoint(received, poison)
    for args in (["evaluate", received, *FEW], ["analyze", received, *FEW], ["sample", received, "--n", "2"],
                 ["encode", received, "--out", tmp_path / "codes.npz"]):
        code, err = _cli(capsys, *args)
        assert_one_line_error(code, err, "weights of epoch 1 hold NaN or infinite values")
    # a warm start from them too, in train and in its check (--init RUN)
    for check in ([], ["--check"]):
        code, err = _cli(capsys, "train", "--init", received, "--out", tmp_path / "warm", *check, *SMALL)
        assert_one_line_error(code, err, f"--init {received / 'checkpoint.pt'}: the weights of epoch 1 hold NaN",
                              "start from another run")
    assert not (tmp_path / "warm").exists()


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.update(preprocessing={"divide": "x"}), "data description"),
    (lambda c: c.update(preprocessing={"divide": 1.0, "mean": torch.zeros(3, 3, 3)}), "data description"),
    (lambda c: c.update(preprocessing={"divide": 1.0, "sd": torch.tensor(math.nan)}), "data description"),
    (lambda c: c.update(data_shape=[-1]), "data description"),
    (lambda c: c.pop("num_data"), "data description"),
])
def test_a_crafted_checkpoint_is_one_line(received, capsys, change, fragment):
    _rewrite_checkpoint(received, change)
    code, err = _cli(capsys, "evaluate", received, *FEW)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("change", [lambda c: c["training"].pop("state"), lambda c: c["training"]["state"].pop("epoch"),
                                    lambda c: c.pop("data_shape")])
def test_a_crafted_checkpoint_is_one_line_on_resume(received, capsys, change):
    _rewrite_checkpoint(received, change)
    code, err = _cli(capsys, "train", "--resume", received, "--set", "inference.schedule.epochs=2")
    assert_one_line_error(code, err, "checkpoint.pt")


# --- crafted summary.json and metrics.csv ------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("summary.json", "[1, 2]"), ("summary.json", '{"best_val_elbo": "high", "best_epoch": [1]}'),
    ("summary.json", "{"), ("summary.json", "[" * 5000), ("metrics.csv", "epoch,train_elbo\n1,x\n"),
    ("metrics.csv", "nothing\n1\n"), ("metrics.csv", ""), ("metrics.csv", "epoch,val_elbo,train_elbo\n1,nan,inf\n"),
    ("metrics.csv", "\x00\x01"),
])
def test_analyze_on_a_crafted_summary_or_metrics_ends_cleanly(received, capsys, name, text):
    (received / name).write_text(text)
    code, err = _cli(capsys, "analyze", received, *FEW, "--draws", "5")
    assert "Traceback" not in err
    assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1), err


# --- --force deletes only what pyro-vae wrote ----------------------------------------------------


USER_FILES = ("analysis/notes.md", "evaluation/e.txt", "figures/paper_fig.png", "samples/s.txt")


def test_force_on_a_folder_that_is_not_a_run_deletes_nothing(tmp_path, capsys):
    project = tmp_path / "PROJ"
    for name in USER_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    code, err = _cli(capsys, "train", "--out", project, "--force", *SMALL)
    assert_one_line_error(code, err, "not a pyro-vae run", "nothing was deleted")
    assert all((project / name).read_text() == name for name in USER_FILES)
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == sorted(USER_FILES)  # no lock left


def test_force_on_a_run_keeps_and_names_what_pyro_vae_did_not_write(received, capsys):
    for name in USER_FILES:
        (received / name).parent.mkdir(parents=True, exist_ok=True)
        (received / name).write_text(name)
    before = sha256_file(received / "checkpoint.pt")
    code = main(["train", "--out", str(received), "--force", *SMALL, "--set", "inference.schedule.seed=1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"kept 4 file(s) that pyro-vae did not write there: {', '.join(sorted(USER_FILES))}" in err
    assert all((received / name).read_text() == name for name in USER_FILES)
    assert sha256_file(received / "checkpoint.pt") != before  # the run itself was replaced


def test_force_on_a_comparison_keeps_an_unrelated_run_in_runs(tmp_path, capsys, small_run):
    project = tmp_path / "PROJ"
    shutil.copytree(small_run, project / "runs" / "theirs")  # an unrelated run; PROJ is no comparison
    code, err = _cli(capsys, "compare", "--out", project, "--force", "--estimators", "trace_elbo", "--seeds", "1")
    assert_one_line_error(code, err, "not a pyro-vae comparison", "nothing was deleted")
    assert (project / "runs" / "theirs" / "checkpoint.pt").is_file()


def test_force_with_the_runs_figures_a_link_deletes_nothing(received, tmp_path, capsys):
    outside = tmp_path / "figs"
    outside.mkdir()
    (outside / "paper.png").write_text("mine")
    shutil.rmtree(received / "figures")
    (received / "figures").symlink_to(outside)
    kept = {name: (received / name).read_bytes() for name in ("spec.toml", "checkpoint.pt", "metrics.csv")}
    code, err = _cli(capsys, "train", "--out", received, "--force", *SMALL)
    assert_one_line_error(code, err, "figures is a symbolic link", "nothing was deleted")
    assert all((received / name).read_bytes() == data for name, data in kept.items())
    assert (outside / "paper.png").read_text() == "mine"


def test_a_manifest_listing_paths_outside_the_run_deletes_nothing_there(received, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    manifest = json.loads((received / MANIFEST).read_text())
    manifest["files"] += [str(victim), "../victim.txt", "figures/../../victim.txt"]
    (received / MANIFEST).write_text(json.dumps(manifest))
    code = main(["train", "--out", str(received), "--force", *SMALL])
    assert code == 0, capsys.readouterr().err
    assert victim.read_text() == "keep"


# --- output paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("out, fragment", [
    ("", "--out is empty"), ("afile.txt/sub", "cannot be written"), ("dangling", "does not exist"),
    ("/proc/pyro_vae_x", "cannot be written"), ("/sys/pyro_vae_x", "cannot be written"),
])
def test_an_output_path_that_cannot_be_a_run_is_one_line(tmp_path, capsys, monkeypatch, out, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, err = _cli(capsys, "train", "--out", out, *SMALL)
    assert_one_line_error(code, err, fragment)
    assert (tmp_path / "afile.txt").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_an_encode_output_path_that_cannot_be_written_is_one_line(small_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nowhere")
    code, err = _cli(capsys, "encode", small_run, "--out", "afile.txt/sub.npz")  # was a NotADirectoryError traceback
    assert_one_line_error(code, err, "could not write afile.txt/sub.npz (afile.txt is not a folder)")
    code, err = _cli(capsys, "encode", small_run, "--out", "dangling.npz")  # was replaced without --force
    assert_one_line_error(code, err, "dangling.npz: exists", "--force")
    assert _cli(capsys, "encode", small_run, "--out", "dangling.npz", "--force")[0] == 0
    assert not (tmp_path / "dangling.npz").is_symlink() and not (tmp_path / "nowhere").exists()  # replaced, not followed
    assert (tmp_path / "afile.txt").read_text() == "x"


# root writes into a read-only folder: as root, the command runs without the capabilities that
# override file permissions (setpriv, util-linux), as anyone else would
AS_NON_ROOT = (["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
                "--"] if os.geteuid() == 0 else [])


@pytest.mark.skipif(bool(AS_NON_ROOT) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_a_read_only_run_is_one_line(received):
    os.chmod(received, 0o555)
    try:
        result = subprocess.run([*AS_NON_ROOT, sys.executable, "-m", "pyro_vae.cli", "evaluate", str(received), *FEW],
                                capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(received, 0o755)
    assert_one_line_error(result.returncode, result.stderr, f"{received / 'evaluation'}: cannot create the folder",
                          "Permission denied")
    assert not (received / "evaluation").exists()


def test_a_folder_that_cannot_be_created_is_one_line(received, capsys, monkeypatch):
    """What a read-only run folder gives anyone but root (who may write there anyway)."""
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name in ("evaluation", "samples"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    for args, folder in ((["evaluate", received, *FEW], "evaluation"), (["sample", received, "--n", "2"], "samples")):
        code, err = _cli(capsys, *args)
        assert_one_line_error(code, err, f"{received / folder}: cannot create the folder (Permission denied)")


@pytest.mark.parametrize("command", [["sample", "{run}"], ["evaluate", "{run}"], ["encode", "{run}", "--out", "x.npz"]])
def test_a_seed_beyond_64_bits_is_one_line(small_run, capsys, command):
    code, err = _cli(capsys, *[a.format(run=small_run) for a in command], "--seed", str(10**23))
    assert code == 2 and "expected a seed" in err and len(err.strip().splitlines()) == 1


# --- disk full and file size limits -------------------------------------------------------------------


def _limited(kb: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (kb * 1024, resource.RLIM_INFINITY))


def test_a_file_size_limit_while_saving_the_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--out", str(tmp_path / "run"), *SMALL],
                            capture_output=True, text=True, preexec_fn=_limited(100), timeout=300)
    assert_one_line_error(result.returncode, result.stderr, "could not write", "checkpoint.pt", "ulimit -f")
    assert not list((tmp_path / "run").glob(".*.tmp*"))  # no half-written file left


def test_analyze_under_a_file_size_limit_is_one_line_not_a_crash(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    result = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "analyze", str(run), *FEW, "--draws", "5"],
                            capture_output=True, text=True, preexec_fn=_limited(20), timeout=300)
    assert_one_line_error(result.returncode, result.stderr, "posterior.nc", "ulimit -f")  # was exit 139, a segfault


# --- memory refused up front -----------------------------------------------------------------------


@pytest.fixture
def two_gib(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 2**30)


def test_iwae_k_beyond_memory_is_refused_naming_it(two_gib, capsys):
    code, err = _cli(capsys, "train", "--check", "--set", "inference.estimator.kind=iwae",
                     "--set", "inference.estimator.k=10000")
    assert_one_line_error(code, err, "a training step (128 examples x 10000 sample(s) each)",
                          "more than the 2 GiB available", "lower inference.estimator.k or inference.schedule.batch_size")
    code, err = _cli(capsys, "train", "--check", "--set", "inference.estimator.kind=iwae",
                     "--set", "inference.estimator.k=50")
    assert code == 0, err


@pytest.mark.parametrize("args, flag", [
    (["sample", "{run}", "--n", "1000000000"], "lower --n"),  # the z alone: 16 GB
    (["encode", "{run}", "--out", "{tmp}/codes.npz", "--samples", "1000000000"], "lower --samples"),  # one example's draws
    (["compare", "--out", "{tmp}/cmp", "--estimators", "trace_elbo,iwae", "--seeds", "100000000"], "lower --seeds"),
])
def test_a_command_beyond_memory_is_refused_naming_its_flag(small_run, tmp_path, two_gib, capsys, args, flag):
    code, err = _cli(capsys, *[a.format(run=small_run, tmp=tmp_path) for a in args])
    assert_one_line_error(code, err, flag)
    assert not (tmp_path / "codes.npz").exists() and not (small_run / "samples" / "samples.npz").exists()


def test_many_samples_are_drawn_in_chunks_and_the_figure_shows_the_first(received, capsys):
    import numpy as np
    from pyro_vae.workflows.sample import SHOWN, sample_run

    png, npz = sample_run(received, 70_000, seed=3)
    arrays = np.load(npz)
    assert arrays["z"].shape == (70_000, 2) and arrays["mean"].shape == (70_000, 64)
    vae = load_run(received).vae
    torch.manual_seed(3)
    z, mean = vae.sample(16)  # the first chunk's draws, as one call draws them
    assert np.allclose(arrays["z"][:16], z.numpy(), atol=1e-6)
    with torch.no_grad():  # every chunk's means decode its own z
        assert np.allclose(arrays["mean"], vae.decode_mean(torch.from_numpy(arrays["z"])).numpy(), atol=1e-6)
    assert png.stat().st_size > 0 and SHOWN == 64


def test_draws_beyond_memory_stream_to_the_file(received, tmp_path, monkeypatch, capsys):
    """encode --samples S and sample --n N write pass by pass: files several times larger
    than the memory allowed are written, and read back as the draws they should be."""
    import numpy as np

    monkeypatch.setattr(memory, "available_memory", lambda: 4 * 2**20)  # the arrays below are 29 MB and 21 MB
    code, err = _cli(capsys, "encode", received, "--out", tmp_path / "codes.npz", "--samples", "2000", "--seed", "1")
    assert code == 0, err
    codes = np.load(tmp_path / "codes.npz")
    draws, mean, std = codes["samples"], codes["mean"], codes["std"]
    assert draws.shape == (1797, 2000, 2) and draws.nbytes > 6 * 4 * 2**20
    run = load_run(received)
    levels = __import__("sklearn.datasets").datasets.load_digits().data[codes["index"]]
    q = run.vae.q(run.prepare(levels))
    assert np.allclose(mean, q.mean.detach().numpy(), atol=1e-5)
    # each example's 2000 draws are its own q's: their mean within 6 standard errors, their sd within 10%
    assert (np.abs(draws.mean(1) - mean) < 6 * std / math.sqrt(2000)).all()
    assert np.allclose(draws.std(1), std, rtol=0.1)
    assert len({d.tobytes() for d in draws[:, :4]}) == 1797  # no pass written twice

    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 2**20)  # 1024 draws a pass; the means are 21 MB
    code, err = _cli(capsys, "sample", received, "--n", "80000", "--seed", "2")
    assert code == 0, err
    arrays = np.load(received / "samples" / "samples.npz")
    assert arrays["mean"].shape == (80_000, 64) and arrays["mean"].nbytes > 9 * 2 * 2**20
    assert np.allclose(arrays["z"].mean(0), 0, atol=0.02) and np.allclose(arrays["z"].std(0), 1, atol=0.02)
    with torch.no_grad():
        assert np.allclose(arrays["mean"][-500:], run.vae.decode_mean(torch.from_numpy(arrays["z"][-500:])).numpy(),
                           atol=1e-6)


def test_draws_beyond_the_disk_are_refused_before_any_work(received, tmp_path, monkeypatch, capsys):
    free = shutil.disk_usage(tmp_path)._replace(free=10 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    code, err = _cli(capsys, "encode", received, "--out", tmp_path / "codes.npz", "--samples", "2000")
    assert_one_line_error(code, err, "codes.npz: about 28.8 MB", "disk has 10.5 MB free", "lower --samples")
    code, err = _cli(capsys, "sample", received, "--n", "80000")
    assert_one_line_error(code, err, "samples.npz: about 21.1 MB", "lower --n")
    assert not (tmp_path / "codes.npz").exists() and not (received / "samples" / "samples.npz").exists()


def test_a_comparison_reads_back_the_runs_of_kinds_given_with_vary(tmp_path, capsys):
    code = main(["compare", "--out", str(tmp_path / "cmp"), "--vary",
                 "model.posterior.kind=diagonal_normal,user_components:StandardNormalPosterior", "--seeds", "1",
                 "--samples", "5", "--limit", "10", "--snr-k", "", "--set", "inference.schedule.epochs=1",
                 "--set", "model.latent_dim=2"])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(tmp_path / "cmp", "comparison")
    assert len(manifest["runs"]) == 2 and "comparison.csv" in manifest["files"]
    # what the user typed is trusted in that command only: reading the run back later needs --trust-code
    run = tmp_path / "cmp" / manifest["runs"][1]
    with pytest.raises(RunError, match="trust_code=True"):
        load_run(run)
    assert load_run(run, trust_code=True).spec.model.posterior["kind"] == "user_components:StandardNormalPosterior"
