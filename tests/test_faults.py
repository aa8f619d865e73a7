"""What a run leaves behind when it is killed, interrupted, diverges, or meets bad files."""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, run_cli
from pyro_vae.errors import RunError
from pyro_vae.files import atomic_write
from pyro_vae.runs import load_checkpoint, load_run, record_outputs, sha256_file

TESTS = Path(__file__).parent
LONG = ["--set", "inference.schedule.epochs=12", "--set", "inference.schedule.batch_size=16",
        "--set", "inference.schedule.checkpoint_every=37", "--quiet"]
TIMING = {"seconds", "examples_per_second"}


def spawn(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(TESTS)}, **kw)


def metrics_without_timing(run):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def assert_same_weights(a, b):
    ca, cb = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (a, b))
    for key in ("weights",):
        assert ca[key].keys() == cb[key].keys()
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), name  # bit for bit
    for name, tensor in ca["training"]["last_weights"].items():
        assert torch.equal(tensor, cb["training"]["last_weights"][name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    code, _, stderr = run_cli("train", "--out", out, *LONG)
    assert code == 0, stderr
    return out


def wait_for(condition, proc, timeout=120):
    """Until ``condition()`` or the process ends; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError


def checkpoint_step(out) -> int:
    """The global step of RUN/checkpoint.pt (written by rename, so never half a file), 0 before the first."""
    try:
        return load_checkpoint(out / "checkpoint.pt")["training"]["state"]["global_step"]
    except (FileNotFoundError, RunError):
        return 0


def wait_for_step(out, step, proc, timeout=300):
    """Until the run's checkpoint holds ``step`` or a later one (a chosen point of training,
    the same on any machine); False if the process ended first."""
    seen = [None]

    def reached():
        path = out / "checkpoint.pt"
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp == seen[0]:
            return False
        seen[0] = stamp
        return checkpoint_step(out) >= step

    return wait_for(reached, proc, timeout)


TOTAL_STEPS = 12 * (1617 // 16)  # LONG: 12 epochs of 101 steps, a checkpoint every 37 and at each epoch's end
KILL_AT = (40, 260, 480, 700, 850)  # steps after which a SIGKILL lands; the last leaves 300+ steps to run


@pytest.mark.integration
def test_sigkill_at_chosen_steps_then_resume_reproduces_the_run(reference, tmp_path):
    """Kill -9 at five chosen points of training (once the checkpoint holds a given step:
    the kill lands a few steps later, mid-epoch, on any machine, however fast), resume each
    time, and compare with the run that was never interrupted."""
    out = tmp_path / "killed"
    proc = spawn("train", "--out", out, *LONG)
    resumed_from = []
    for step in KILL_AT:
        assert wait_for_step(out, step, proc), f"the run ended before step {step}: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "training finished before the kill"
        resumed_from.append(checkpoint_step(out))
        proc = spawn("train", "--resume", out, "--quiet")
    code = proc.wait(timeout=300)
    assert code == 0, proc.stderr.read()
    assert all(step <= at < TOTAL_STEPS for step, at in zip(KILL_AT, resumed_from)), resumed_from  # each mid-run
    assert metrics_without_timing(out) == metrics_without_timing(reference)
    assert_same_weights(out, reference)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not list(out.glob(".*.tmp*"))


@pytest.mark.integration
def test_sigterms_finish_the_step_checkpoint_and_say_how_to_resume(reference, tmp_path):
    """SIGTERM after SIGTERM, every millisecond until the process ends (as when torchrun's
    launcher dies: Linux sends the parent-death signal once per launcher thread; or when a
    scheduler signals both launcher and workers): the first stops training after a step and
    the rest are ignored, so the checkpoint, the summary, the lock's release and the resume
    line are all written, and the run resumes exactly. A signal after the last of them may
    still end the process (-15)."""
    out = tmp_path / "term"
    proc = spawn("train", "--out", out, *LONG)
    assert wait_for_step(out, 200, proc)  # mid-run on any machine: 1000 steps remain
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    stderr = proc.stderr.read()
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), stderr
    assert stderr.count(f"Resume with: pyro-vae train --resume {out}") == 1 and "Traceback" not in stderr, stderr
    assert (out / ".lock").read_text() == ""  # released
    state = load_checkpoint(out / "checkpoint.pt")["training"]["state"]
    assert state["global_step"] > 0
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    code, _, stderr = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, stderr
    assert metrics_without_timing(out) == metrics_without_timing(reference)
    assert_same_weights(out, reference)


@pytest.mark.integration
def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resuming(reference, tmp_path):
    """Killed after the last epoch's checkpoint but before its figures and final summary (the
    summary still says running): resuming trains nothing and writes what was missing; the
    summary, written last, is what marks a run ended."""
    out = tmp_path / "unfinished"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "figures")
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    code, _, stderr = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in (reference / "figures").iterdir())
    assert metrics_without_timing(out) == metrics_without_timing(reference)
    assert_same_weights(out, reference)
    code, _, stderr = run_cli("train", "--resume", out)
    assert_one_line_error(code, stderr, "already finished")


@pytest.mark.integration
def test_resume_of_a_finished_run_and_bad_combinations(reference):
    code, _, stderr = run_cli("train", "--resume", reference)
    assert_one_line_error(code, stderr, "already finished")
    code, _, stderr = run_cli("train", "--resume", reference, "--set", "model.latent_dim=3")
    assert_one_line_error(code, stderr, "--resume takes --set inference.schedule.epochs=N only", "--init RUN")
    code, _, stderr = run_cli("train", "--resume", reference, "--model", "vampprior")
    assert_one_line_error(code, stderr, "--resume continues RUN with its own spec.toml; drop --model")


@pytest.mark.integration
def test_a_nan_stops_training_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # 1437 training examples in batches of 128: 11 steps per epoch; NaN from step 31 = epoch 3, step 9
    code, _, stderr = run_cli("train", "--out", out, "--set", "model.likelihood.kind=faulty:NaNAfter",
                              "--set", "model.likelihood.after=30", "--set", "inference.schedule.epochs=6", "--quiet",
                              env={"PYTHONPATH": str(TESTS)})
    assert code == 3, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "epoch 3, step 9" in lines[0] and "learning rate" in lines[0]
    assert load_checkpoint(out / "checkpoint.pt")["training"]["state"]["epoch"] == 2
    assert [row["epoch"] for row in metrics_without_timing(out)] == ["1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "epoch 3, step 9" in summary["message"]
    assert all(torch.isfinite(t).all() for t in load_run(out, trust_code=True).vae.state_dict().values())


def test_gradient_clipping_bounds_the_step():
    from pyro_vae.infer.optim import SingleOptimizer

    w = torch.nn.Parameter(torch.zeros(3))
    opt = SingleOptimizer(torch.optim.SGD([w], lr=1.0), clip_norm=0.5)
    w.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    opt([w])
    assert torch.allclose(w.detach(), torch.tensor([-0.3, -0.4, 0.0])) and w.grad is None
    w.grad = torch.tensor([float("inf"), 0.0, 0.0])
    from pyro_vae.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="gradient norm is inf"):
        opt([w])


def copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "evaluation", "samples"))
    return dst


@pytest.mark.integration
def test_a_planted_pickle_is_refused_and_runs_nothing(digits_run, tmp_path):
    run = copy_run(digits_run, tmp_path / "evil")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "weights": Payload(), "data_shape": [64], "num_data": 1}, run / "checkpoint.pt")
    record_outputs(run, [], checkpoint_sha256=sha256_file(run / "checkpoint.pt"))  # its sender rewrote the hash too
    before = (run / "checkpoint.pt").read_bytes()
    code, _, stderr = run_cli("evaluate", run, "--samples", "5")
    assert_one_line_error(code, stderr, "refused to load", "only load checkpoints written by pyro-vae")
    with pytest.raises(RunError, match="refused to load"):
        load_run(run)
    assert not marker.exists()
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.integration
def test_truncated_checkpoint_missing_files_and_misnamed_data(digits_run, tmp_path):
    run = copy_run(digits_run, tmp_path / "cut")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for args in (("evaluate", run, "--samples", "5"), ("analyze", run, "--samples", "5"), ("sample", run)):
        code, _, stderr = run_cli(*args)
        assert_one_line_error(code, stderr, "corrupt: its SHA-256 is not the one recorded")
    assert (run / "checkpoint.pt").read_bytes() == data[: len(data) // 2]  # nothing overwritten
    (run / "manifest.json").unlink()  # a run from before manifests: torch's reader still refuses it
    code, _, stderr = run_cli("evaluate", run, "--samples", "5")
    assert_one_line_error(code, stderr, "corrupt or truncated checkpoint")
    (run / "spec.toml").unlink()
    code, _, stderr = run_cli("evaluate", run)
    assert_one_line_error(code, stderr, "spec.toml: missing")
    fake = tmp_path / "images-idx3-ubyte.gz"
    fake.write_text("not gzip at all")
    code, _, stderr = run_cli("train", "--data", fake, "--out", tmp_path / "x")
    assert_one_line_error(code, stderr, "cannot read IDX file")
    text = tmp_path / "data.npz"
    text.write_text("a,b\n1,2\n")
    code, _, stderr = run_cli("train", "--data", text, "--out", tmp_path / "y")
    assert_one_line_error(code, stderr, "not a readable .npz archive")


def test_atomic_write_keeps_the_previous_file_when_the_disk_is_full(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("previous\n")

    def write(f):
        f.write(b"half of the new ")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match=r"\(No space left on device\); the previous file, if any, is kept"):
        atomic_write(target, write)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


@pytest.mark.integration
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    """A real write failure: the resumed process may not write files larger than the checkpoint."""
    import resource

    out = tmp_path / "full"
    code, _, stderr = run_cli("train", "--out", out, "--set", "inference.schedule.epochs=2", "--quiet")
    assert code == 0, stderr
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)  # make it look stopped after epoch 1
    checkpoint["training"]["state"]["epoch"] = 1
    checkpoint["training"]["state"]["history"] = checkpoint["training"]["state"]["history"][:1]
    torch.save(checkpoint, out / "checkpoint.pt")
    record_outputs(out, [], checkpoint_sha256=sha256_file(out / "checkpoint.pt"))
    before = (out / "checkpoint.pt").read_bytes()
    limit = len(before) - 1000

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--resume", str(out), "--quiet"],
                            capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert_one_line_error(result.returncode, result.stderr, "could not write", "checkpoint.pt", "previous file")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp*"))
    assert load_checkpoint(out / "checkpoint.pt")["training"]["state"]["epoch"] == 1


@pytest.mark.integration
def test_resume_before_the_first_checkpoint_starts_again(tmp_path, reference):
    out = tmp_path / "early"
    out.mkdir()
    shutil.copy(reference / "spec.toml", out / "spec.toml")
    (out / ".checkpoint.pt.tmp999").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    code, _, stderr = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, stderr
    assert not (out / ".checkpoint.pt.tmp999").exists()
    assert metrics_without_timing(out) == metrics_without_timing(reference)


def _sigterm_to_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler runs before this returns
    raise AssertionError("SIGTERM did not stop the command")


@pytest.mark.integration
def test_sigterm_before_training_stops_in_one_line(monkeypatch, capsys):
    from pyro_vae import cli

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli.distributed, "init", _sigterm_to_self)
    assert cli.main(["train", "--quiet"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "pyro-vae train: stopped by signal 15\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone with it


@pytest.mark.integration
def test_sigterm_after_the_lock_is_taken_releases_it(monkeypatch, tmp_path, capsys):
    """Stopped where training has not started (after the run directory is claimed, before
    the first step): the lock is released and the directory resumes."""
    import importlib

    from pyro_vae import cli

    out = tmp_path / "early"
    monkeypatch.setattr(importlib.import_module("pyro_vae.workflows.train"), "_run", _sigterm_to_self)
    assert cli.main(["train", "--out", str(out), "--set", "inference.schedule.epochs=1"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "pyro-vae train: stopped by signal 15"
    assert (out / ".lock").read_text() == ""
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
