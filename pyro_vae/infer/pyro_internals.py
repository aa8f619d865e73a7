"""Every use of Pyro's internals, in one place: names and methods that are not Pyro's public
API, on which the estimators, the compiled step, checkpoints and the gradient probe rely.
``tests/test_pyro_internals.py`` pins each against the installed Pyro, so an upgrade that
moves one fails there, by name, rather than somewhere downstream.

* TraceGraph_ELBO keeps its decaying-average baselines in the param store under a name
  prefix (``pyro/infer/tracegraph_elbo.py``), and replaces them every step;
* the param store's ``_params`` holds the tensors ``pyro.param`` hands out;
* ``ELBO._get_traces`` yields one (model, guide) trace pair per particle, and
  ``ELBO._get_vectorized_trace`` one pair for all particles under a particle plate;
* ``poutine.replay`` copies the replayed trace's ``infer`` dict into each site
  (``pyro/poutine/replay_messenger.py``): :class:`ReplayValues` keeps the site's own.
"""

from __future__ import annotations

from typing import Iterator

import pyro
from pyro.poutine.replay_messenger import ReplayMessenger
from torch import Tensor

BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


def baselines() -> dict[str, Tensor]:
    """TraceGraph_ELBO's decaying-average baselines now in the param store, copied, by name."""
    return {k: v.detach().clone() for k, v in sorted(pyro.get_param_store().items()) if k.startswith(BASELINE_PREFIX)}


def set_baselines(values: dict[str, Tensor], remove_others: bool = False) -> None:
    """Put baselines into the param store; with ``remove_others`` drop the ones not given."""
    store = pyro.get_param_store()
    if remove_others:
        for name in [k for k in store.keys() if k.startswith(BASELINE_PREFIX) and k not in values]:
            del store[name]
    for name, value in values.items():
        store[name] = value


def in_param_store(tensor: Tensor) -> bool:
    """Whether ``tensor`` is one of the param store's current tensors (TraceGraph_ELBO's
    baselines leave it when they are replaced)."""
    return any(value is tensor for value in pyro.get_param_store()._params.values())


def particle_traces(elbo, model, guide, args, kwargs) -> Iterator[tuple]:
    """(model trace, guide trace) per particle, as the ELBO itself draws them."""
    return elbo._get_traces(model, guide, args, kwargs)


def vectorized_traces(elbo, model, guide, args, kwargs) -> tuple:
    """One (model trace, guide trace) for all particles, under the ELBO's particle plate."""
    return elbo._get_vectorized_trace(model, guide, args, kwargs)


class ReplayValues(ReplayMessenger):
    """``poutine.replay`` that takes the trace's values and keeps each site's own ``infer``:
    Pyro's replay also copies the trace's ``infer`` dict, which would bring back a stopped
    density built at the first draw's inputs instead of the one at the replayed values."""

    def _pyro_sample(self, msg) -> None:
        infer = msg["infer"]
        super()._pyro_sample(msg)
        msg["infer"] = infer
