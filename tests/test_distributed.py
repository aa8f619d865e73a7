"""Several processes with torch.distributed (gloo on loopback), launched by the real torchrun.

Every launch uses ``--standalone`` (a free port chosen by torchrun) or a port found free
here, a timeout, and kills its whole process group if it overruns: nothing is left behind.
"""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT, assert_one_line_error, run_cli
from pyro_vae import distributed
from pyro_vae.data import Dataset
from pyro_vae.errors import SpecError

TESTS = Path(__file__).parent
EPOCHS = ["--model", "bernoulli_mlp", "--set", "inference.schedule.epochs=8", "--set", "inference.schedule.batch_size=32"]


def torchrun(*args, nproc=2, timeout=180, extra=(), wait=True, env=None):
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS``: (code, stdout, stderr),
    or the Popen when ``wait`` is false (in its own process group, to be killed whole)."""
    command = [sys.executable, "-m", "torch.distributed.run", *(extra or ["--standalone"]),
               "--nproc_per_node", str(nproc), *map(str, args)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS,
                               env=environment, start_new_session=True)
    if not wait:
        return process
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"torchrun overran {timeout} s:\n{err[-2000:]}")
    return process.returncode, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


# --- gradient equivalence ----------------------------------------------------------------------


@pytest.mark.integration
def test_two_processes_take_the_one_process_steps(tmp_path):
    """One all-reduced step with W = 2 equals one process's step on the same global batch
    (1e-6 relative), for one latent layer and for two, and 20 steps stay within float tolerance. The posterior is a point
    mass, so the draws are the same in any process; rank 1 starts from other weights,
    which the broadcast from rank 0 must replace."""
    code, _, err = torchrun("dist_worker.py", tmp_path)
    assert code == 0, err[-3000:]
    subprocess.run([sys.executable, str(TESTS / "dist_worker.py"), str(tmp_path)], check=True, timeout=120)
    two = torch.load(tmp_path / "weights_w2.pt", weights_only=True)
    one = torch.load(tmp_path / "weights_w1.pt", weights_only=True)
    for run, tolerance in (("one_step", 1e-6), ("sgd_one_step", 1e-6), ("twenty_steps", 1e-5), ("two_layers_one_step", 1e-6),
                           ("covariates_two_steps", 1e-6)):
        for name in one[run]:
            a, b = one[run][name], two[run][name]
            assert torch.allclose(a, b, rtol=tolerance, atol=1e-9), (run, name, (a - b).abs().max())
    assert any(".inject." in name for name in one["covariates_two_steps"])
    _each_rank_read_its_own_rows_covariates(tmp_path)


def _each_rank_read_its_own_rows_covariates(folder):
    """With covariates (looked up by each example's global row), every encoder call of each
    rank read the c of the very rows of x it read: its own half of each global batch."""
    generator = torch.Generator().manual_seed(0)  # dist_worker's data, drawn the same way
    x = torch.randn(88, 5, generator=generator, dtype=torch.float64)
    c = torch.stack([torch.randint(3, (88,), generator=generator).double(),
                     torch.randn(88, generator=generator, dtype=torch.float64)], -1)
    training_rows = 0
    for rank in (0, 1):
        seen = torch.load(folder / f"seen_w2_rank{rank}.pt", weights_only=True)
        training = [(u, cu) for u, cu in seen if len(u) == 20]  # the training steps' shards (validation: 8 rows)
        assert len(training) == 2, [len(u) for u, _ in seen]  # one epoch, two global batches of 40
        for u, cu in training:
            rows = [int(torch.nonzero((x[:80] == row).all(-1)).flatten()[0]) for row in u]
            assert torch.allclose(cu, c[rows], atol=1e-6), rank  # c is held in float32
            training_rows += len(rows)
    assert training_rows == 80


# --- the CLI under torchrun --------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same spec trained by one process, by two (torchrun), and by two again with the
    launcher killed after the first epoch and resumed under torchrun."""
    folder = tmp_path_factory.mktemp("distributed")
    one, two, killed = folder / "one", folder / "two", folder / "killed"
    code, _, err = run_cli("train", "--out", one, *EPOCHS, "--quiet", env={"OMP_NUM_THREADS": "1"})
    assert code == 0, err
    code, out, err = torchrun("-m", "pyro_vae", "train", "--out", two, *EPOCHS, "--quiet")
    assert code == 0, err[-3000:]
    launcher = torchrun("-m", "pyro_vae", "train", "--out", killed, *EPOCHS, "--quiet", wait=False)
    workers = _poll(lambda: len(found := _worker_pids(launcher.pid)) == 2 and found, launcher)  # found before the kill
    _poll(lambda: (killed / "metrics.csv").exists() and len(metrics(killed)) >= 2, launcher)  # epoch 2 of 8 done
    os.kill(launcher.pid, signal.SIGKILL)  # at once, so 6 epochs remain on any machine: the launcher alone,
    # its workers run in sessions of their own
    _wait_gone(workers.values(), 60)  # they stop on their own (SIGTERM when the launcher dies)
    _, killed_err = launcher.communicate(timeout=60)  # the workers wrote to the same pipe
    return {"one": one, "two": two, "killed": killed, "two_stdout": out, "killed_workers": len(workers),
            "killed_stderr": killed_err}


@pytest.mark.integration
def test_only_rank_zero_writes_and_speaks(runs):
    two = runs["two"]
    names = sorted(p.name for p in two.iterdir())
    assert names == [".lock", "checkpoint.pt", "figures", "manifest.json", "metrics.csv", "spec.toml", "summary.json"]
    assert (two / ".lock").read_text() == ""  # rank 0 held the run's lock, and released it
    assert not [p for p in two.rglob(".*tmp*")]
    assert runs["two_stdout"].count("run: ") == 1  # one rank reports


@pytest.mark.integration
def test_two_processes_train_like_one(runs):
    """Different latent draws, so not identical: the same trajectory within noise."""
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two]
    for a, b in zip(one, two):
        assert abs(float(a["val_elbo"]) - float(b["val_elbo"])) < 0.05 * abs(float(a["val_elbo"])), (a, b)
    assert one != two  # rank 1's draws are its own


@pytest.mark.integration
def test_two_processes_train_semi_supervised_m2_like_one(tmp_path):
    """Labelled examples under torchrun: each rank draws its own labelled subsample beside
    its shard of the batch, and the all-reduced objective trains as one process does (the
    validation ELBO of every epoch within 2%, the validation accuracy within 4 points)."""
    import json

    from pyro_vae.cli import main

    common = ["--model", "m2_semisupervised", "--set", "data.labelled=100", "--set", "inference.schedule.epochs=6",
              "--set", "inference.schedule.batch_size=64", "--quiet"]
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    code, _, err = torchrun("-m", "pyro_vae", "train", *common, "--out", tmp_path / "two")
    assert code == 0, err[-3000:]
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert abs(float(a["val_elbo"]) - float(b["val_elbo"])) < 0.02 * abs(float(a["val_elbo"])), (a, b)
    accuracy = {}
    for name in ("one", "two"):
        assert main(["evaluate", str(tmp_path / name), "--samples", "5"]) == 0
        accuracy[name] = json.loads((tmp_path / name / "evaluation" / "valid.json").read_text())["accuracy"]
    assert accuracy["one"] > 0.6 and abs(accuracy["one"] - accuracy["two"]) < 0.04, accuracy


@pytest.mark.integration
def test_resume_with_another_number_of_processes_is_refused(runs):
    killed = runs["killed"]
    before = (killed / "checkpoint.pt").read_bytes()
    code, _, err = run_cli("train", "--resume", killed)
    assert_one_line_error(code, err, "trained by 2 process(es), this is 1", "same number")
    assert (killed / "checkpoint.pt").read_bytes() == before


@pytest.mark.integration
def test_resume_under_torchrun_after_killing_the_launcher_is_exact(runs):
    assert runs["killed_workers"] == 2
    assert len(metrics(runs["killed"])) < 8  # it was stopped mid-run
    said = [line for line in runs["killed_stderr"].splitlines() if "Resume with: torchrun" in line]
    assert len(said) == 1 and "interrupted by signal 15" in said[0]  # one checkpoint, announced once
    code, _, err = torchrun("-m", "pyro_vae", "train", "--resume", runs["killed"], "--quiet")
    assert code == 0, err[-3000:]
    assert metrics(runs["killed"]) == metrics(runs["two"])


@pytest.mark.slow  # ~20 s of CPU; two processes on one node are the default suite's
@pytest.mark.integration
def test_two_nodes_on_one_machine(runs, tmp_path):
    """torchrun --nnodes 2 --node_rank 0|1 with the rendezvous on loopback: the same world of
    two ranks as one node with two processes, so the same metrics, exactly."""
    port = free_port()
    out = tmp_path / "nodes"
    nodes = [torchrun("-m", "pyro_vae", "train", "--out", out, *EPOCHS, "--quiet", nproc=1, wait=False,
                      extra=["--nnodes", "2", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                             "--master_port", str(port)])
             for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], [r[1][-2000:] for r in results]
    assert metrics(out) == metrics(runs["two"])


@pytest.mark.integration
def test_sharded_evaluation_equals_one_process_per_example(runs, tmp_path):
    run = runs["one"]
    args = ["evaluate", run, "--samples", "64", "--limit", "90", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    single = dict(np.load(run / "evaluation" / "valid.npz"))
    code, _, err = torchrun("-m", "pyro_vae", *args)
    assert code == 0, err[-3000:]
    sharded = np.load(run / "evaluation" / "valid.npz")
    for name, values in single.items():
        assert np.allclose(values, sharded[name], rtol=1e-5, atol=1e-5), name


@pytest.mark.integration
def test_sharded_analysis_equals_one_process(runs):
    import json

    run = runs["one"]
    args = ["analyze", run, "--samples", "40", "--limit", "60", "--draws", "10", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    single = json.loads((run / "analysis" / "diagnostics.json").read_text())
    code, out, err = torchrun("-m", "pyro_vae", *args)
    assert code == 0, err[-3000:]
    assert out.count("report: ") == 1
    sharded = json.loads((run / "analysis" / "diagnostics.json").read_text())
    for key in ("khat_bands", "active_units", "n", "draws_stored"):
        assert sharded[key] == single[key], key
    for key in ("psis_log_likelihood", "is_log_likelihood"):
        assert sharded[key]["mean"] == pytest.approx(single[key]["mean"], rel=1e-5), key
    assert sharded["khat_max"] == pytest.approx(single["khat_max"], rel=1e-4)


def _poll(condition, process, timeout=120):
    """``condition()``'s first true value, checked every 5 ms; fails if ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if value := condition():
            return value
        time.sleep(0.005)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"torchrun ended (exit {process.poll()}) or overran {timeout} s before the chosen point")


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (its children with a RANK), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        variables = dict(v.split(b"=", 1) for v in environ if b"=" in v)
        if parent == launcher_pid and b"RANK" in variables:
            found[int(variables[b"RANK"])] = int(entry.name)
    return found


def _wait_gone(pids, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    remaining = set(pids)
    while remaining and time.monotonic() < deadline:
        remaining = {pid for pid in remaining if Path(f"/proc/{pid}").exists() and
                     "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1] or ["Z"])}
        time.sleep(0.05)
    for pid in remaining:
        os.kill(pid, signal.SIGKILL)
    assert not remaining, f"workers {remaining} outlived their launcher by {timeout} s"


@pytest.mark.integration
def test_a_rank_killed_on_purpose_stops_the_others_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "victim"
    launcher = torchrun("-m", "pyro_vae", "train", "--out", out, "--set", "inference.schedule.epochs=200",
                        "--set", "inference.schedule.collective_timeout=30", "--quiet", wait=False)
    try:
        _poll(lambda: (out / "metrics.csv").exists() and len(metrics(out)) >= 1, launcher)
        saved = (out / "checkpoint.pt").read_bytes()
        os.kill(_worker_pids(launcher.pid)[1], signal.SIGKILL)  # in epoch 2 of 200
        started = time.monotonic()
        _, err = launcher.communicate(timeout=90)
        elapsed = time.monotonic() - started
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert elapsed < 60, elapsed
    survivor = [line for line in err.splitlines() if "(rank 0): another process failed" in line]
    assert len(survivor) == 1 and "--resume" in survivor[0] and "Traceback" not in err.split("(rank 0)")[0][-200:]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)  # intact: a whole, loadable file
    assert checkpoint["training"]["world_size"] == 2
    assert not [p for p in out.rglob(".*tmp*")]
    assert len(saved) > 0


# --- refusals (checked before any collective: a group of two is faked in one process) --------


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "_current", distributed.Group(rank=0, world_size=2))


def _trainer(table, batch_size):
    from pyro_vae.infer.train import Trainer
    from pyro_vae.model import build_vae
    from pyro_vae.spec import Spec

    spec = Spec.from_dict({"model": {"latent_dim": 2, "likelihood": {"kind": "gaussian"}},
                           "inference": {"estimator": table, "schedule": {"batch_size": batch_size}}})
    x = torch.randn(30, 4)
    return Trainer(build_vae(spec.model, (4,)), Dataset({"train": x, "valid": x[:4]}, {}, (4,), "t"), spec.inference)


def test_a_batch_the_processes_do_not_divide_is_refused(two_ranks):
    with pytest.raises(SpecError, match="batch_size = 9 is not divisible by the 2 processes; choose a multiple of 2"):
        _trainer({"kind": "trace_elbo"}, 9)


def test_tail_adaptive_is_refused_with_several_processes(two_ranks):
    with pytest.raises(SpecError, match="cannot be split across 2 processes"):
        _trainer({"kind": "tail_adaptive"}, 30)


def test_rank_seeds_are_deterministic_and_distinct():
    assert distributed.rank_seed(7, 0) == 7
    seeds = [distributed.rank_seed(7, r) for r in range(1, 5)]
    assert seeds == [distributed.rank_seed(7, r) for r in range(1, 5)] and len(set(seeds)) == 4 and 7 not in seeds


def test_blockwise_does_not_depend_on_the_number_of_ranks():
    """One process computing every block gives what each rank computes for its own blocks."""
    def compute(rows):
        return {"draw": torch.randn(rows.stop - rows.start), "index": torch.arange(rows.start, rows.stop)}

    whole = distributed.blockwise(10, 3, distributed.SINGLE, compute, seed=5)
    assert torch.equal(whole["index"], torch.arange(10))
    blocks = [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    for j, rows in enumerate(blocks):  # each block's draws are its own seeded stream
        with torch.random.fork_rng():
            torch.manual_seed(5 * 1_000_003 + j)
            assert torch.equal(whole["draw"][rows], torch.randn(rows.stop - rows.start))


@pytest.mark.integration
def test_python_dash_m_pyro_vae_is_the_cli():
    result = subprocess.run([sys.executable, "-m", "pyro_vae", "--version"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("pyro-vae ")


@pytest.mark.slow  # three torchrun launches, ~50 s of CPU
@pytest.mark.integration
def test_resume_under_torchrun_keeps_every_ranks_trace_graph_baselines(tmp_path):
    """TraceGraph_ELBO's decaying-average baselines live in each rank's param store and
    average that rank's own shard's costs, so they differ between ranks: the checkpoint keeps
    every rank's and each rank restores its own. A run extended from 1 to 2 epochs under
    torchrun ends with the weights of the uninterrupted 2-epoch run, bit for bit (when only
    rank 0's were kept and every rank restored them, the weights differed by ~1e-3)."""
    common = ["-m", "pyro_vae", "train", "--model", "gmvae", "--inference", "trace_graph",
              "--set", "inference.schedule.batch_size=128", "--quiet"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    for args in ([*common, "--set", "inference.schedule.epochs=2", "--out", whole],
                 [*common, "--set", "inference.schedule.epochs=1", "--out", part]):
        code, _, err = torchrun(*args)
        assert code == 0, err[-3000:]
    baselines = torch.load(part / "checkpoint.pt", weights_only=True)["training"]["baselines_ranks"]
    assert baselines and all(not torch.equal(b[0], b[1]) for b in baselines.values())  # the premise: they differ
    code, _, err = torchrun("-m", "pyro_vae", "train", "--resume", part, "--set", "inference.schedule.epochs=2", "--quiet")
    assert code == 0, err[-3000:]
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True)["weights"] for run in (whole, part))
    for name in a:
        assert torch.equal(a[name], b[name]), (name, (a[name] - b[name]).abs().max())
