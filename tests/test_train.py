"""Training end to end: the CLI, the run directory, determinism, load_run, errors, and
early stopping's patience counted from the end of the KL warm-up."""

import csv
import os
import subprocess
import sys
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import QUICK, assert_one_line_error, run_cli, write_npz
from helpers import small_gaussian_vae as small
from pyro_vae import load_run
from pyro_vae.cli import main
from pyro_vae.data import Dataset
from pyro_vae.devices import resolve_device
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.loop import CheckpointClock, Progress, StopVote
from pyro_vae.infer.schedules import LR_SCHEDULES, kl_weight, temperature
from pyro_vae.spec import load_spec
from pyro_vae.runs import CHECKPOINT_FORMAT, METRIC_COLUMNS
from pyro_vae.spec import Schedule, Spec


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_cli_train_writes_a_complete_run(digits_run):
    files = {p.name for p in digits_run.iterdir()}
    assert {"spec.toml", "metrics.csv", "summary.json", "checkpoint.pt", "figures"} <= files
    assert {p.name for p in (digits_run / "figures").iterdir()} == {"elbo.png", "reconstructions.png", "samples.png"}
    assert all((digits_run / "figures" / n).stat().st_size > 5000 for n in ("elbo.png", "samples.png"))
    rows = read_metrics(digits_run)
    assert list(rows[0]) == METRIC_COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert float(r["val_elbo"]) == pytest.approx(float(r["reconstruction"]) - float(r["kl"]))
        assert float(r["seconds"]) > 0 and float(r["examples_per_second"]) > 0
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["best_val_elbo"] == pytest.approx(max(float(r["val_elbo"]) for r in rows))
    assert summary["device"] == "cpu" and set(summary["versions"]) == {"python", "torch", "pyro"}
    spec = tomllib.loads((digits_run / "spec.toml").read_text())
    assert spec["inference"]["schedule"]["epochs"] == 3 and spec["data"]["name"] == "digits"
    # weights only: loads without unpickling arbitrary objects
    checkpoint = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["data_shape"] == [64]


@pytest.mark.integration
def test_load_run_rebuilds_the_trained_vae(digits_run):
    run = load_run(digits_run)
    checkpoint = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    for name, tensor in run.vae.state_dict().items():
        assert torch.equal(tensor, checkpoint["weights"][name])
    x = torch.rand(5, 64)
    again = load_run(digits_run)
    q1, q2 = run.vae.q(x), again.vae.q(x)
    assert torch.equal(q1.base_dist.loc, q2.base_dist.loc) and torch.equal(q1.base_dist.scale, q2.base_dist.scale)
    z = torch.randn(3, 16)
    assert torch.equal(run.vae.decoder(z), again.vae.decoder(z))


@pytest.mark.integration
def test_same_seed_same_numbers_and_weights(tmp_path):
    runs = []
    for name in ("a", "b"):
        assert main(["train", "--out", str(tmp_path / name), *QUICK]) == 0
        runs.append(tmp_path / name)
    a, b = (read_metrics(r) for r in runs)
    for ra, rb in zip(a, b):
        for column in ("train_elbo", "val_elbo", "kl", "reconstruction", "beta"):
            assert ra[column] == rb[column]
    wa, wb = (torch.load(r / "checkpoint.pt", weights_only=True)["weights"] for r in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert main(["train", "--out", str(tmp_path / "c"), *QUICK, "--set", "inference.schedule.seed=1"]) == 0
    assert read_metrics(tmp_path / "c")[0]["train_elbo"] != a[0]["train_elbo"]


@pytest.mark.integration
def test_early_stopping_keeps_the_best_weights(tmp_path):
    out = tmp_path / "es"
    # a learning rate so large that validation gets worse after the first epoch
    assert main(["train", "--out", str(out), "--quiet", "--model", "binomial", "--set", "inference.schedule.epochs=30",
                 "--set", "inference.schedule.patience=2", "--set", "inference.optimizer.lr=0.05"]) == 0
    rows = read_metrics(out)
    summary = json.loads((out / "summary.json").read_text())
    best = max(rows, key=lambda r: float(r["val_elbo"]))
    assert summary["status"] == "early_stopped" and len(rows) < 30
    assert summary["best_epoch"] == int(best["epoch"]) and len(rows) == summary["best_epoch"] + 2
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    last, kept = checkpoint["training"]["last_weights"], checkpoint["weights"]
    assert any(not torch.equal(last[k], kept[k]) for k in kept)  # kept = best, not last


def test_kl_warmup_is_linear():
    """beta * min(1, (step + 1) / (warmup_epochs * steps_per_epoch)), by hand: 2 epochs of
    10 steps at beta = 0.5 -> 0.5/20 at the first step, 0.25 at step 9, 0.5 from step 19 on."""
    assert kl_weight(0, 10, 2, 0.5) == pytest.approx(0.5 / 20)
    assert kl_weight(9, 10, 2, 0.5) == pytest.approx(0.25)
    assert kl_weight(19, 10, 2, 0.5) == pytest.approx(0.5) and kl_weight(500, 10, 2, 0.5) == 0.5
    assert kl_weight(4, 8, 1.5, 1.0) == pytest.approx(5 / 12)  # a fractional warm-up: 12 steps
    assert kl_weight(0, 10, 0, 2.0) == 2.0 and kl_weight(0, 10, Schedule(beta=2.0).kl_warmup_epochs, 2.0) == 2.0


def test_temperature_anneals_geometrically():
    """tau(t) = max(final, initial * (final / initial)^(t / anneal_epochs)), by hand: from 1
    to 0.25 over 2 epochs -> 0.5 after 1 epoch, 0.25 after 2 and after; no anneal -> final."""
    assert temperature(0.0, 1.0, 0.25, 2.0) == 1.0
    assert temperature(1.0, 1.0, 0.25, 2.0) == pytest.approx(0.5)
    assert temperature(0.5, 2.0, 0.5, 2.0) == pytest.approx(2.0 * 0.25 ** 0.25)  # 1.4142...
    assert temperature(2.0, 1.0, 0.25, 2.0) == pytest.approx(0.25) and temperature(7.0, 1.0, 0.25, 2.0) == 0.25
    assert temperature(0.0, 1.0, 0.5, 0.0) == 0.5 and temperature(0.0, 0.5, 1.0, 3.0) == 1.0
    relaxed = ESTIMATORS.build({"kind": "relaxed", "initial_temperature": 1.0, "final_temperature": 0.25,
                                "anneal_epochs": 2.0})
    assert relaxed.temperature(1.0) == pytest.approx(0.5)  # the estimator's schedule is this one


def test_checkpoint_clock_is_due_every_n_steps_but_not_at_an_epochs_end():
    clock = CheckpointClock(every=4, steps_per_epoch=10)
    due = [g for g in range(1, 31) if clock.due(g, (g - 1) % 10)]
    assert due == [4, 8, 12, 16, 24, 28]  # 20 is epoch 2's last step: the epoch's end writes it
    assert not any(CheckpointClock(0, 10).due(g, 0) for g in range(1, 30))


def test_the_stop_vote_of_several_ranks_stops_all_and_averages_the_loss():
    class TwoRanks:  # the all-reduce of two ranks, the other one having loss 3.0 and a stop request
        active, world_size = True, 2

        def all_reduce_sum(self, tensor):
            return tensor + torch.tensor([3.0, 1.0], dtype=torch.float64)

    assert StopVote(TwoRanks())(1.0, []) == (2.0, True)  # (1 + 3) / 2, and the other rank's stop
    single = type("One", (), {"active": False})()
    assert StopVote(single)(1.5, []) == (1.5, False) and StopVote(single)(None, [15]) == (None, True)


def test_without_a_bar_about_twenty_epoch_lines_are_logged():
    lines = []
    progress = Progress(total=100, done=0, enabled=False, log=lines.append)
    row = {"train_elbo": -1.0, "val_elbo": -2.0, "kl": 3.0, "seconds": 0.5}
    for epoch in range(1, 101):
        progress.epoch({**row, "epoch": epoch}, 100, stopped_early=False)
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [1, *range(5, 101, 5)]
    assert lines[0] == "epoch    1/100  train_elbo -1.000  val_elbo -2.000  kl 3.000  (0.50 s)"
    progress.epoch({**row, "epoch": 7}, 100, stopped_early=True)  # the epoch training stopped at
    assert lines[-1].startswith("epoch    7/100")


@pytest.mark.integration
def test_warmup_reaches_the_metrics(tmp_path):
    out = tmp_path / "w"
    assert main(["train", "--out", str(out), *QUICK, "--set", "inference.schedule.kl_warmup_epochs=4"]) == 0
    betas = [float(r["beta"]) for r in read_metrics(out)]
    assert betas == pytest.approx([0.25, 0.5])


def torch_rates(scheduler, epochs: int) -> list[float]:
    """torch's own scheduler stepped once an epoch: the rate during each of ``epochs`` epochs."""
    rates = []
    for _ in range(epochs):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_learning_rate_schedules_equal_torchs_schedulers_and_burdas_table():
    """f(e) of each kind against an independent computation: torch's StepLR and
    ExponentialLR stepped epoch by epoch, and Burda et al.'s (2016) schedule written out
    by hand (3^i epochs at 1e-3 * 10^(-i/7), i = 0..7: 3280 epochs ending at 1e-4)."""
    def adam():
        return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)

    step = LR_SCHEDULES.build({"kind": "step", "every": 10, "factor": 0.9})  # VaDE's
    expected = torch_rates(torch.optim.lr_scheduler.StepLR(adam(), step_size=10, gamma=0.9), 45)
    assert [2e-3 * step(e) for e in range(45)] == pytest.approx(expected, rel=1e-12)
    exponential = LR_SCHEDULES.build({"kind": "exponential", "factor": 0.95})
    expected = torch_rates(torch.optim.lr_scheduler.ExponentialLR(adam(), gamma=0.95), 30)
    assert [2e-3 * exponential(e) for e in range(30)] == pytest.approx(expected, rel=1e-12)
    burda = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3 ** i)]
    assert len(burda) == 3280
    stages = LR_SCHEDULES.build({"kind": "stages"})
    assert [1e-3 * stages(e) for e in range(3280)] == pytest.approx(burda, rel=1e-12)
    assert 1e-3 * stages(3279) == pytest.approx(1e-4) and stages(10 ** 6) == stages(3279)  # the last rate stays
    two = LR_SCHEDULES.build({"kind": "stages", "growth": 2, "factor": 0.5, "stages": 3})
    assert [two(e) for e in range(9)] == [1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert LR_SCHEDULES.build({"kind": "constant"})(10 ** 6) == 1.0


@pytest.mark.integration
def test_the_learning_rate_schedule_reaches_the_optimizer_and_resumes_exactly(tmp_path):
    """Halving the rate every epoch: metrics.csv reads lr * 0.5^e for epochs e = 0..3, the
    checkpointed Adam holds the last epoch's rate, and a run stopped after 2 epochs and
    resumed to 4 ends with the uninterrupted run's numbers and weights."""
    schedule = ["--set", 'inference.lr_schedule={kind="step", every=1, factor=0.5}', "--set",
                "inference.optimizer.lr=0.004", "--quiet"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--out", str(whole), "--set", "inference.schedule.epochs=4", *schedule]) == 0
    rows = read_metrics(whole)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.004, 0.002, 0.001, 0.0005], rel=1e-12)
    checkpoint = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert checkpoint["training"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0005, rel=1e-12)
    assert main(["train", "--out", str(parts), "--set", "inference.schedule.epochs=2", *schedule]) == 0
    assert main(["train", "--resume", str(parts), "--set", "inference.schedule.epochs=4", "--quiet"]) == 0
    timing = ("seconds", "examples_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(parts)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows]
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True)["weights"] for r in (whole, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
    constant = tmp_path / "constant"
    assert main(["train", "--out", str(constant), "--set", "inference.schedule.epochs=2", "--set",
                 "inference.optimizer.lr=0.004", "--quiet"]) == 0
    assert read_metrics(constant)[0]["train_elbo"] == rows[0]["train_elbo"]  # epoch 1 at the full rate either way
    assert read_metrics(constant)[1]["train_elbo"] != rows[1]["train_elbo"]  # then the rates differ


@pytest.mark.integration
def test_a_run_begun_before_the_lr_column_reads_its_optimizers_rate_once_resumed(tmp_path):
    """A checkpoint whose epochs lack "lr" (written before metrics had the column) resumes,
    and metrics.csv gives those epochs the optimizer's rate, the only one they ran at."""
    from pyro_vae.runs import load_checkpoint, save_checkpoint

    out = tmp_path / "old"
    assert main(["train", "--out", str(out), *QUICK, "--set", "inference.optimizer.lr=0.002"]) == 0
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    for row in checkpoint["training"]["state"]["history"]:
        del row["lr"]
    save_checkpoint(out / "checkpoint.pt", checkpoint)
    assert main(["train", "--resume", str(out), "--set", "inference.schedule.epochs=3", "--quiet"]) == 0
    assert [float(r["lr"]) for r in read_metrics(out)] == [0.002, 0.002, 0.002]


@pytest.mark.integration
def test_a_schedules_bad_factor_stops_training_in_one_line_and_an_optimizer_without_lr_trains(tmp_path):
    """A schedule of the user's that returns -1 after the first epoch (gradient ascent if
    applied) stops the run in one line naming the slot and the value, exit 2; an optimizer
    without a rate 'lr' trains under the default constant schedule, its lr column nan, and
    under any other schedule is refused in one line."""
    code, _, err = run_cli("train", "--out", tmp_path / "neg", "--set", "inference.schedule.epochs=2", "--quiet",
                           "--set", "inference.lr_schedule.kind=user_components:NegativeAfterOneEpoch",
                           cwd=Path(__file__).parent)  # where user_components.py is
    assert code == 2 and "Traceback" not in err
    assert "inference.lr_schedule: NegativeAfterOneEpoch gave the factor -1.0 after 1 epochs" in err
    assert [float(r["lr"]) for r in read_metrics(tmp_path / "neg")] == [0.001]  # epoch 1 ran, at the full rate
    sign = ["--set", "inference.optimizer.kind=user_components:SignSGD"]
    out = tmp_path / "sign"
    assert run_cli("train", "--out", out, *QUICK, *sign, cwd=Path(__file__).parent)[0] == 0
    assert all(np.isnan(float(r["lr"])) for r in read_metrics(out))
    code, _, err = run_cli("train", "--out", tmp_path / "never", *QUICK, *sign, "--set", "inference.lr_schedule.kind=step",
                           cwd=Path(__file__).parent)
    assert code == 2 and "SignSGD has no learning rate 'lr' to schedule" in err and len(err.strip().splitlines()) == 1


def test_device_choice(monkeypatch):
    from pyro_vae.errors import SpecError

    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # any torch device string
    with pytest.raises(SpecError, match=r"'cuda:2' but this machine has 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(SpecError, match="no CUDA device is available; use 'auto' or 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(SpecError, match="'banana' is not a torch device"):
        resolve_device("banana")
    if not torch.backends.mps.is_available():
        with pytest.raises(SpecError, match=r"^device: 'mps' is not available here \(.*\); use 'auto' or 'cpu'") as caught:
            resolve_device("mps", "$device")  # a workflow's parameter: device= in Python, --device on the CLI
        assert caught.value.for_command_line().startswith("--device: 'mps' is not available here")
    spec = load_spec(overrides=["inference.schedule.device=cuda:1"])  # the spec keeps any device string
    assert spec.inference.schedule.device == "cuda:1"
    with pytest.raises(SpecError, match="inference.schedule.device: 'gpu1' is not a torch device"):
        load_spec(overrides=["inference.schedule.device=gpu1"])


@pytest.mark.integration
def test_sample_command(digits_run, capsys):
    assert main(["sample", str(digits_run), "--n", "9"]) == 0
    assert "samples.png" in capsys.readouterr().out
    arrays = np.load(digits_run / "samples" / "samples.npz")
    assert arrays["z"].shape == (9, 16) and arrays["mean"].shape == (9, 64)
    assert np.isfinite(arrays["mean"]).all()


@pytest.mark.integration
def test_check_validates_without_training(tmp_path, capsys):
    assert main(["train", "--check", "--set", "model.latent_dim=8", "--out", str(tmp_path / "never")]) == 0
    out = capsys.readouterr().out
    assert "latent_dim = 8" in out and "# ok: digits" in out
    assert not (tmp_path / "never").exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "model.latent_dims=3"], ["model.latent_dims", "unknown key"]),
        (["--set", "model.prior.kind=nope"], ["unknown prior kind 'nope'", "standard_normal"]),
        (["--set", "model.latent_dim=-3"], ["model.latent_dim", "greater than 0"]),
        (["--set", "inference.schedule.epochs=lots"], ["inference.schedule.epochs", "integer"]),
        (["--data", "no/such/file.npz"], ["no such data file"]),
        (["--set", 'inference.lr_schedule={kind="step", factor=1.5}'],
         ["inference.lr_schedule.factor", "less than or equal to 1"]),
        (["--set", 'inference.lr_schedule={kind="cosine"}'], ["unknown lr_schedule kind 'cosine'", "stages"]),
        (["--model", "nonesuch"], ["unknown models spec 'nonesuch'"]),
        (["--set", "inference.schedule.device=cuda"] if not torch.cuda.is_available() else ["--set", "x=1"],
         ["no CUDA device"] if not torch.cuda.is_available() else ["x"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
    out = tmp_path / "run"
    code, _, stderr = run_cli("train", "--out", out, *args)
    assert_one_line_error(code, stderr, *fragments)
    assert not out.exists()


@pytest.mark.integration
def test_data_outside_support_through_the_cli(tmp_path):
    counts = write_npz(tmp_path / "counts.npz", train=np.random.default_rng(0).poisson(400, (50, 6)).astype(np.int64))
    code, _, stderr = run_cli("train", "--model", "bernoulli_mlp", "--data", counts, "--out", tmp_path / "r")
    assert_one_line_error(code, stderr, "bernoulli", "whole numbers", "counts: choose a likelihood for counts")


@pytest.mark.integration
def test_out_refuses_to_overwrite_without_force(digits_run, tmp_path):
    before = (digits_run / "metrics.csv").read_bytes()
    code, _, stderr = run_cli("train", "--out", digits_run, *QUICK)
    assert_one_line_error(code, stderr, "already holds files", "--force", "--resume")
    assert (digits_run / "metrics.csv").read_bytes() == before
    target = tmp_path / "forced"
    assert main(["train", "--out", str(target), *QUICK]) == 0
    (target / "evaluation").mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(target), "--force", *QUICK, "--set", "inference.schedule.epochs=1"]) == 0
    assert len(read_metrics(target)) == 1
    assert not (target / "evaluation").exists() and (target / "notes.txt").read_text() == "mine"


@pytest.mark.integration
def test_force_keeps_the_old_run_when_the_new_spec_is_bad(digits_run):
    before = (digits_run / "checkpoint.pt").read_bytes()
    code, _, stderr = run_cli("train", "--out", digits_run, "--force", "--set", "model.latent_dim=0")
    assert code == 2 and (digits_run / "checkpoint.pt").read_bytes() == before


@pytest.mark.integration
def test_help_explains():
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "--set KEY=VALUE" in out and "--resume RUN" in out


@pytest.mark.integration
def test_example_script_trains_with_plain_svi():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "svi_custom_prior.py"
    result = subprocess.run([sys.executable, str(script), "--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "validation log p(x)" in result.stdout and "learned prior scales" in result.stdout


def test_patience_counts_from_the_end_of_the_warmup():
    from pyro_vae.infer.train import Trainer

    vae = small(latent_dim=2)
    x = torch.randn(20, 6)
    data = Dataset({"train": x, "valid": x[:5]}, {}, (6,), "t")
    spec = Spec.from_dict({"inference": {"schedule": {"epochs": 10, "batch_size": 10, "patience": 1,
                                                       "kl_warmup_epochs": 3}}})
    trainer = Trainer(vae, data, spec.inference, progress=False)
    for epoch, value in enumerate([-10.0, -11.0, -12.0, -13.0, -14.0], start=1):
        trainer.end_epoch({"epoch": epoch, "val_elbo": value})
        assert trainer.state.stopped_early == (epoch == 4), epoch  # epochs 2-3 worse, but in the warm-up
        if trainer.state.stopped_early:
            break
    assert trainer.state.best_epoch == 1


FLUSHES = torch.set_flush_denormal(False)  # True where the CPU has the flags (x86 SSE3's FTZ/DAZ); off, as by default
needs_flush = pytest.mark.skipif(not FLUSHES, reason="this CPU cannot flush denormals (torch.set_flush_denormal)")


@needs_flush
@pytest.mark.parametrize("before", [False, True])
def test_denormals_are_flushed_for_the_duration_and_the_mode_restored(before):
    from pyro_vae.devices import denormals_flushed, flushes_denormals

    torch.set_flush_denormal(before)
    try:
        assert flushes_denormals() == before
        with denormals_flushed():
            assert flushes_denormals() and (torch.tensor([3e-39]) * 1.0).item() == 0.0
            assert (torch.tensor([3e-38]) * 1.0).item() == pytest.approx(3e-38)  # a normal float is kept
        assert flushes_denormals() == before
    finally:
        torch.set_flush_denormal(False)


@needs_flush
def test_training_and_the_command_line_flush_denormals(monkeypatch):
    """Trainer.fit computes with denormals flushed (a trained decoder's gradients are
    denormal, and x86 slows down on them) and restores the mode; `pyro-vae` flushes for the
    whole command."""
    from pyro_vae import cli
    from pyro_vae.devices import flushes_denormals
    from pyro_vae.infer.train import Trainer

    x = torch.randn(20, 6)
    data = Dataset({"train": x, "valid": x[:5]}, {}, (6,), "t")
    spec = Spec.from_dict({"inference": {"schedule": {"epochs": 2, "batch_size": 10}}})
    seen = []
    trainer = Trainer(small(latent_dim=2), data, spec.inference, progress=False,
                      on_epoch=lambda t: seen.append(flushes_denormals()))
    assert not flushes_denormals()
    trainer.fit()
    assert seen == [True, True] and not flushes_denormals()
    monkeypatch.setattr(cli, "_run_command", lambda args: 10 + flushes_denormals())
    assert cli.main(["specs"]) == 11 and not flushes_denormals()


@needs_flush
def test_threads_started_inside_flush_too():
    """torch's intra-op threads copy the flags from the thread that starts them: entered
    before the first parallel operation, every thread flushes (a later entry would leave
    the other threads' half of a parallel product denormal)."""
    code = ("import numpy as np, torch\n"
            "from pyro_vae.devices import denormals_flushed\n"
            "torch.set_num_threads(2)\n"
            "a = torch.from_numpy(np.full(4_000_000, 1e-39, dtype=np.float32))\n"
            "with denormals_flushed():\n"
            "    print(int(((a * 1.0) != 0).sum()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0 and result.stdout.strip() == "0", result.stderr


def test_the_denormals_benchmark_runs_and_restores_the_mode():
    import importlib.util

    from pyro_vae.devices import flushes_denormals

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "denormals.py"
    spec = importlib.util.spec_from_file_location("denormals_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = flushes_denormals()
    result = module.main(["--rounds", "1", "--steps", "2", "--train", "300"])
    assert flushes_denormals() == before
    assert result["flushed"] > 0 and result["computed"] > 0 and result["ratio"] > 0
