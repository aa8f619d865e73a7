"""Fixtures only; the shared helpers are in helpers.py."""

import pyro
import pytest

from pyro_vae.cli import main


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One small trained run on digits, shared by tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--out", str(out), "--set", "inference.schedule.epochs=3", "--quiet"]) == 0
    return out
