"""CUDA paths. These run only where a GPU is present; the same code paths are
device-agnostic and run on the CPU in the other tests."""

import pytest
import torch

from helpers import QUICK, needs_cuda
from pyro_vae import load_run
from pyro_vae.cli import main
from pyro_vae.infer.evaluate import importance_sample

pytestmark = [pytest.mark.cuda, needs_cuda]


def test_train_on_cuda_and_load_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    assert main(["train", "--out", str(out), *QUICK, "--set", "inference.schedule.device=cuda"]) == 0
    summary = (out / "summary.json").read_text()
    assert '"device": "cuda' in summary
    run = load_run(out, device="cpu")
    assert next(run.vae.parameters()).device.type == "cpu"
    gpu = load_run(out, device="cuda")
    x = torch.rand(7, 64)
    torch.testing.assert_close(run.vae.q(x).base_dist.loc, gpu.vae.q(x.cuda()).base_dist.loc.cpu(), rtol=1e-4, atol=1e-5)


def test_same_seed_same_numbers_on_cuda(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--out", str(tmp_path / name), *QUICK, "--set", "inference.schedule.device=cuda"]) == 0
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[1].split(",")[:6] == \
        (tmp_path / "b" / "metrics.csv").read_text().split("\n")[1].split(",")[:6]


def test_importance_sampling_on_cuda_matches_cpu(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *QUICK]) == 0
    cpu, gpu = load_run(out, "cpu"), load_run(out, "cuda")
    x = torch.rand(20, 64).round()
    a = importance_sample(cpu.vae, x, 2000).log_likelihood
    b = importance_sample(gpu.vae, x.cuda(), 2000).log_likelihood.cpu()
    torch.testing.assert_close(a, b, atol=0.1, rtol=0)
