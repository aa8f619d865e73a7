"""Every prior x likelihood x posterior trains, chosen only through the spec (a covering
set in the default suite, the whole product with ``-m slow``).

Each combination trains a few steps on data in its likelihood's support (digits, or
small generated counts) and must end with a finite validation ELBO better than at
initialization. Networks are small so the whole product runs in CI.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from pyro_vae.data import check_support, load_data
from pyro_vae.infer.evaluate import elbo_terms
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae
from pyro_vae.model.likelihoods import LIKELIHOODS as LIKELIHOOD_CLASSES
from pyro_vae.spec import Spec

PRIORS = {
    "standard_normal": {},
    "learned_normal": {},
    "mixture": {"components": 3},
    "vamp": {"components": 8},
    "flow": {"hidden": [16]},
    "student_t": {},
    "laplace": {},
}
POSTERIORS = {"diagonal_normal": {}, "low_rank_normal": {}, "iaf": {"hidden": [16], "context": 8}}
# likelihood -> (its parameters, the data it models)
LIKELIHOODS = {
    "bernoulli": ({}, "unit"),
    "continuous_bernoulli": ({}, "unit"),
    "gaussian": ({"scale": "decoder", "min_scale": 0.05}, "unit"),
    "laplace": ({"min_scale": 0.05}, "unit"),
    "student_t": ({"min_scale": 0.05}, "unit"),
    "beta": ({}, "open_unit"),
    "binomial": ({}, "levels"),
    "beta_binomial": ({}, "levels"),
    "categorical": ({}, "levels"),
    "discretized_logistic": ({"components": 2}, "levels"),
    "poisson": ({}, "counts"),
    "negative_binomial": ({}, "counts"),
    "zinb": ({}, "counts"),
}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_data_files(tmp_path_factory.mktemp("data"))


def write_data_files(folder):
    """An npz per kind of data (unit, open_unit, levels, counts) in ``folder``: their paths."""
    from sklearn.datasets import load_digits

    digits = load_digits().data[:400]
    rng = np.random.default_rng(0)
    # counts with a per-feature scale to learn (the untrained decoder predicts rates near 0.7)
    rate = 6 * np.exp(rng.normal(0, 0.5, (400, 2)) @ rng.normal(0, 1, (2, 12)))
    counts = rng.poisson(rate * (rng.random((400, 12)) > 0.3))
    arrays = {
        "unit": digits / 16,
        "open_unit": digits / 16 * 0.96 + 0.02,
        "levels": digits.astype(np.uint8) * 15,  # integer levels 0..240
        "counts": counts.astype(np.int64),
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], train=array)
    return paths


COMBINATIONS = list(itertools.product(PRIORS, LIKELIHOODS, POSTERIORS))
# the default suite: every likelihood x posterior pair once, the priors in turn (each about 5 times);
# the whole product (231) runs with -m slow
COVERING = [(list(PRIORS)[i % len(PRIORS)], likelihood, posterior)
            for i, (likelihood, posterior) in enumerate(itertools.product(LIKELIHOODS, POSTERIORS))]
NETWORKS = {"mlp": {"hidden": [32]}, "gated_mlp": {"hidden": [32]}, "conv": {"channels": [8, 16]}}
OPTIMIZERS = {"sgd": {"lr": 1e-5, "momentum": 0.9}, "adam": {"lr": 3e-3}, "adamw": {"lr": 3e-3},  # sgd: the loss is N-scaled
              "adam_normgrad": {"lr": 3e-3}}
LR_SCHEDULES = {"constant": {}, "step": {"every": 3, "factor": 0.5}, "exponential": {"factor": 0.9},
                "stages": {"growth": 2, "factor": 0.5}}


def test_the_tables_name_every_registered_kind():
    """A kind registered in any slot and missing here (or in test_properties.py, for
    estimators and the property tests) fails: every kind is trained and checked."""
    from pyro_vae.infer.optim import OPTIMIZERS as optimizers
    from pyro_vae.infer.schedules import LR_SCHEDULES as lr_schedules
    from pyro_vae.model.likelihoods import LIKELIHOODS as likelihoods
    from pyro_vae.model.networks import NETWORKS as networks
    from pyro_vae.model.posteriors import POSTERIORS as posteriors
    from pyro_vae.model.priors import PRIORS as priors

    for table, registry in ((PRIORS, priors), (LIKELIHOODS, likelihoods), (POSTERIORS, posteriors),
                            (NETWORKS, networks), (OPTIMIZERS, optimizers), (LR_SCHEDULES, lr_schedules)):
        assert set(table) == set(registry.names()), registry.slot


@pytest.mark.parametrize("network, optimizer", [(list(NETWORKS)[i % len(NETWORKS)], optimizer)
                                                for i, optimizer in enumerate(OPTIMIZERS)])
def test_every_network_and_optimizer_trains(network, optimizer, data_files):
    table = {"kind": network, **NETWORKS[network]}
    _trains("standard_normal", "bernoulli", "diagonal_normal", data_files, encoder=table, decoder=table,
            optimizer={"kind": optimizer, **OPTIMIZERS[optimizer]})


@pytest.mark.parametrize("schedule", list(LR_SCHEDULES))
def test_every_learning_rate_schedule_trains(schedule, data_files):
    _trains("standard_normal", "bernoulli", "diagonal_normal", data_files,
            lr_schedule={"kind": schedule, **LR_SCHEDULES[schedule]})


@pytest.mark.parametrize("prior, likelihood, posterior", COVERING, ids=["-".join(c) for c in COVERING])
def test_combination_trains(prior, likelihood, posterior, data_files):
    _trains(prior, likelihood, posterior, data_files)


@pytest.mark.slow
@pytest.mark.parametrize("prior, likelihood, posterior", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_every_combination_trains(prior, likelihood, posterior, data_files):
    _trains(prior, likelihood, posterior, data_files)


def test_the_covering_set_has_every_kind_and_pair():
    assert {c[0] for c in COVERING} == set(PRIORS)
    assert {(c[1], c[2]) for c in COVERING} == set(itertools.product(LIKELIHOODS, POSTERIORS))


def _trains(prior, likelihood, posterior, data_files, encoder=None, decoder=None, optimizer=None, lr_schedule=None):
    params, data_kind = LIKELIHOODS[likelihood]
    small = {"kind": "mlp", "hidden": [32]}
    spec = Spec.from_dict({
        "model": {
            "latent_dim": 3,
            "prior": {"kind": prior, **PRIORS[prior]},
            "likelihood": {"kind": likelihood, **params},
            "posterior": {"kind": posterior, **POSTERIORS[posterior]},
            "encoder": encoder or small,
            "decoder": decoder or small,
        },
        "inference": {"optimizer": optimizer or {"kind": "adam", "lr": 3e-3}, "schedule": {"epochs": 10, "batch_size": 60},
                      "lr_schedule": lr_schedule or {"kind": "constant"}},
        "data": {"path": str(data_files[data_kind])},  # normalize = "auto": levels and counts stay as they are
    })
    torch.manual_seed(0)
    data = load_data(spec.data, seed=0, likelihood=LIKELIHOOD_CLASSES.resolve(likelihood))
    vae = build_vae(spec.model, data.data_shape, num_data=len(data.splits["train"]))
    check_support(data, vae.likelihood)
    valid = data.splits["valid"]

    def val_elbo():
        vae.eval()
        torch.manual_seed(1)
        rec, kl = elbo_terms(vae, valid, num_samples=16)
        return (rec - kl).mean().item()

    before = val_elbo()
    Trainer(vae, data, spec.inference, progress=False, log=lambda _: None).fit()
    after = val_elbo()
    assert math.isfinite(after), (before, after)
    assert after > before, (before, after)
