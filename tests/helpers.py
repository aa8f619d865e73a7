"""What the tests share besides fixtures: the shared data's paths and skip marks, the
real CLI in a subprocess, the one-line-error assertion, small writers, and a small VAE."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST = SHARED_DATA / "binarized_mnist.npz"
MNIST_IDX = SHARED_DATA / "mnist-idx" / "t10k-images-idx3-ubyte.gz"

needs_mnist = pytest.mark.skipif(not MNIST.exists(), reason=f"shared data absent: {MNIST}")
needs_idx = pytest.mark.skipif(not MNIST_IDX.exists(), reason=f"shared data absent: {MNIST_IDX}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def run_cli(*args, cwd=None, timeout=300, env=None):
    """The real entry point in a subprocess: (exit code, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(code, stderr, *fragments):
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


QUICK = ["--set", "inference.schedule.epochs=2", "--quiet"]


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def small_gaussian_vae(latent_dim=8, features=6, **model):
    """A small VAE on real-valued features (Gaussian likelihood, MLPs of 16 units), seeded;
    ``model`` overrides its spec's [model] keys."""
    spec = Spec.from_dict({"model": {
        "latent_dim": latent_dim,
        "likelihood": {"kind": "gaussian"},
        "encoder": {"kind": "mlp", "hidden": [16]},
        "decoder": {"kind": "mlp", "hidden": [16]},
        **model,
    }}).model
    torch.manual_seed(0)
    return build_vae(spec, (features,))


def trace_enum_loss_at_draws(vae, x, num_data, seed=5):
    """TraceEnum_ELBO's loss on the batch x (rows 0..B-1 of ``num_data``) and q(z|x) with the
    draws z the guide made at that seed (y enumerated, not drawn): (loss, q, z)."""
    import pyro

    from pyro_vae.infer.estimators import ESTIMATORS

    vae.num_data = num_data
    vae.use_estimator(estimator := ESTIMATORS.build({"kind": "trace_enum"}), "trace_enum")
    pyro.set_rng_seed(seed)
    loss = estimator.loss(vae.model, vae.guide, x, torch.arange(len(x)))
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        q = vae.q(x)
        return loss, q, q.rsample()
