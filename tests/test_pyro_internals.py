"""Pins each Pyro internal the library relies on (pyro_vae/infer/pyro_internals.py) against
the installed Pyro: an upgrade that moves one fails here, by name."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_vae.infer import pyro_internals


def _model(x):
    loc = pyro.param("loc", torch.zeros(()))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _discrete_model(x):
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(y, 1.0), obs=x)


def _score_guide(x):
    logit = pyro.param("logit", torch.zeros(()))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=logit), infer={"baseline": {"use_decaying_avg_baseline": True}})


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_trace_graph_keeps_its_average_baselines_under_the_prefix_and_replaces_them():
    x = torch.randn(4)
    TraceGraph_ELBO().loss_and_grads(_discrete_model, _score_guide, x)
    kept = pyro_internals.baselines()
    assert kept and all(name.startswith(pyro_internals.BASELINE_PREFIX) for name in kept)
    name = next(iter(kept))
    held = pyro.get_param_store()[name]
    assert pyro_internals.in_param_store(pyro.param("logit")) and pyro_internals.in_param_store(held)
    TraceGraph_ELBO().loss_and_grads(_discrete_model, _score_guide, x)
    assert not pyro_internals.in_param_store(held)  # replaced by the next step
    pyro_internals.set_baselines(kept, remove_others=True)
    assert torch.equal(pyro.get_param_store()[name], kept[name])
    pyro_internals.set_baselines({}, remove_others=True)
    assert not pyro_internals.baselines() and "logit" in pyro.get_param_store()


def _guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0), infer={"mark": "own"})


def test_particle_and_vectorized_traces():
    x = torch.randn(3)
    pairs = list(pyro_internals.particle_traces(Trace_ELBO(num_particles=2), _model, _guide, (x,), {}))
    assert len(pairs) == 2 and all("z" in m.nodes and "z" in g.nodes for m, g in pairs)
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    model_trace, guide_trace = pyro_internals.vectorized_traces(elbo, _model, _guide, (x,), {})
    assert guide_trace.nodes["z"]["value"].shape == (5, 3)


def test_pyro_replay_copies_the_traces_infer_and_replay_values_keeps_the_sites_own():
    x = torch.randn(3)
    trace = poutine.trace(_guide).get_trace(x)
    trace.nodes["z"]["infer"] = {"mark": "from the trace"}
    replayed = poutine.trace(poutine.replay(_guide, trace=trace)).get_trace(x)
    assert replayed.nodes["z"]["infer"] == {"mark": "from the trace"}  # upstream: the workaround's reason
    kept = poutine.trace(pyro_internals.ReplayValues(trace=trace)(_guide)).get_trace(x)
    assert kept.nodes["z"]["infer"] == {"mark": "own"}
    assert torch.equal(kept.nodes["z"]["value"], trace.nodes["z"]["value"])
