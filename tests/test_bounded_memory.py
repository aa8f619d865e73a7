"""Evaluation and analysis of large inputs run in bounded memory (chunking).

Peak resident memory of a fresh process, above its level before the work, must stay
under BOUND_MB and must not grow with the number of importance samples or examples
beyond the per-example results themselves (a few floats per example).
"""

import subprocess
import sys

import pytest


BOUND_MB = 256  # measured here: evaluation about 40 MB, analysis about 170 MB (ArviZ), whatever the size
SCRIPT = """
import resource, sys, torch
from pyro_vae.spec import Spec
from pyro_vae.model import build_vae
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.analysis.inference_data import posterior_draws
n, samples, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
small = {"kind": "mlp", "hidden": [8]}
model = {"latent_dim": 2, "encoder": small, "decoder": small}
if mode == "vamp":  # each draw is scored under 500 components: the chunk plan must count that
    model.update(latent_dim=40, prior={"kind": "vamp", "components": 500})
spec = Spec.from_dict({"model": model}).model
torch.manual_seed(0)
vae = build_vae(spec, (16,))
x = torch.bernoulli(torch.full((n, 16), 0.3))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    if mode in ("evaluate", "vamp"):
        result = importance_sample(vae, x, samples)
        assert torch.isfinite(result.log_likelihood).all()
    else:
        draws = posterior_draws(vae, x, samples, keep_draws=10)
        assert draws.z.shape == (10, n, 2)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def peak_mb(n, samples, mode):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(samples), mode], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_evaluation_memory_is_bounded_as_samples_and_examples_grow():
    small = peak_mb(1000, 500, "evaluate")
    more_samples = peak_mb(1000, 5000, "evaluate")
    large = peak_mb(10000, 5000, "evaluate")  # K = 5000 on 10,000 examples, as in the literature
    assert max(small, more_samples, large) < BOUND_MB, (small, more_samples, large)
    assert large - small < 40, (small, large)


@pytest.mark.integration
def test_analysis_memory_is_bounded_as_samples_grow():
    few = peak_mb(1000, 500, "analyze")
    many = peak_mb(1000, 5000, "analyze")
    assert max(few, many) < BOUND_MB and many - few < 40, (few, many)


@pytest.mark.integration
def test_vampprior_evaluation_memory_is_bounded():
    assert peak_mb(200, 1000, "vamp") < BOUND_MB


def test_the_prior_is_built_once_per_evaluation():
    import torch

    from pyro_vae.infer.evaluate import importance_sample
    from pyro_vae.model import build_vae
    from pyro_vae.spec import Spec

    spec = Spec.from_dict({"model": {"latent_dim": 3, "prior": {"kind": "vamp", "components": 50}}}).model
    vae = build_vae(spec, (16,))
    calls = []
    original = vae.prior.forward
    vae.prior.forward = lambda: calls.append(1) or original()
    importance_sample(vae, torch.rand(40, 16).round(), 300, budget=2**14)  # many chunks
    assert len(calls) == 1
