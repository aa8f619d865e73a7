"""Fixtures, and each pytest-xdist worker's share of the cores; the shared helpers are in
helpers.py."""

import os

import pyro
import pytest
import torch

from pyro_vae.cli import main


def _share_the_cores() -> None:
    """Under pytest-xdist (the default run, ``-n auto``) each of N workers takes cores / N
    threads, for torch here and for the command-line runs its tests start (they inherit
    OMP_NUM_THREADS), so that N workers do not run N x cores threads on the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One small trained run on digits, shared by tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    # the binomial (one output per pixel, a standard normal prior): analytic KL per dimension
    assert main(["train", "--out", str(out), "--model", "binomial", "--set", "inference.schedule.epochs=3", "--quiet"]) == 0
    return out
