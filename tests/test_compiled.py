"""The compiled training step (infer/compiled.py): the same numbers as the eager step.

The traced graph draws the eager step's random numbers in the eager order, so for the
same seed a compiled run must end with the eager run's parameters exactly, across the
catalogue (every prior, likelihood and posterior, in the covering set of
test_every_combination_trains.py), every estimator that compiles, and under a KL warm-up (beta
changes every step). What cannot compile falls back to eager with one line.
"""

import sys

import pytest
import torch

from helpers import assert_one_line_error
from pyro_vae.data import load_data
from pyro_vae.infer import compiled as compiled_module
from pyro_vae.infer.compiled import AUTO_INDUCTOR_STEPS, AUTO_MIN_STEPS, CompiledStep, compile_backend
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae
from pyro_vae.model.likelihoods import LIKELIHOODS as LIKELIHOOD_CLASSES
from pyro_vae.spec import Spec
from test_every_combination_trains import COVERING, LIKELIHOODS, POSTERIORS, PRIORS, write_data_files


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_data_files(tmp_path_factory.mktemp("data"))


ESTIMATORS = {
    "trace_elbo": {},
    "trace_mean_field": {},
    "iwae": {"k": 3},
    "renyi": {"alpha": 0.5, "k": 3},
    "iwae_dreg": {"k": 3},
    "stl": {"k": 2},
    "tail_adaptive": {"num_particles": 3},
}


def _spec(data_files, prior="standard_normal", likelihood="bernoulli", posterior="diagonal_normal",
          estimator="trace_elbo", compile=False, epochs=2, batch_size=60, warmup=1.0, discrete=None):
    params, data_kind = LIKELIHOODS[likelihood]
    small = {"kind": "mlp", "hidden": [16]}
    model = {"latent_dim": 3, "prior": {"kind": prior, **PRIORS[prior]}, "likelihood": {"kind": likelihood, **params},
             "posterior": {"kind": posterior, **POSTERIORS[posterior]}, "encoder": small, "decoder": small}
    if discrete:
        model["discrete"] = discrete
    return Spec.from_dict({
        "model": model,
        "inference": {"estimator": {"kind": estimator, **ESTIMATORS.get(estimator, {})},
                      "schedule": {"epochs": epochs, "batch_size": batch_size, "kl_warmup_epochs": warmup,
                                   "compile": compile}},
        "data": {"path": str(data_files[data_kind])},
    })


def _trainer(spec, lines=None, likelihood=None) -> Trainer:
    """The Trainer of ``spec`` from seed 0, its lines logged to ``lines`` (else printed);
    ``likelihood`` replaces the built one."""
    torch.manual_seed(0)
    data = load_data(spec.data, seed=0, likelihood=LIKELIHOOD_CLASSES.resolve(spec.model.likelihood["kind"]))
    vae = build_vae(spec.model, data.data_shape, num_data=len(data.splits["train"]))
    if likelihood is not None:
        vae.likelihood = likelihood(data.data_shape)
    return Trainer(vae, data, spec.inference, progress=False, log=(lines.append if lines is not None else print))


def _train(spec, lines=None, backend=None):
    """Train ``spec``; with ``backend``, that compiled step whatever the device."""
    trainer = _trainer(spec, lines)
    vae = trainer.vae
    if backend is not None:
        trainer.compiled = CompiledStep(vae, trainer.estimator, trainer.optim.params, backend)
    state = trainer.fit()
    return trainer, [row["train_elbo"] for row in state.history], {k: v.clone() for k, v in vae.state_dict().items()}


def _same_run(data_files, backend="graph", **settings):
    """Eager and compiled runs of one spec: the compiled one did compile (the VampPrior over a
    flow or low-rank posterior says in one line that it cannot), and both end equal."""
    eager, eager_elbo, eager_weights = _train(_spec(data_files, compile=False, **settings))
    lines = []
    compiled, compiled_elbo, compiled_weights = _train(_spec(data_files, compile=backend, **settings), lines)
    notes = [line for line in lines if line.startswith("inference.schedule.compile")]
    if settings.get("prior") == "vamp" and settings.get("posterior", "diagonal_normal") != "diagonal_normal":
        assert len(notes) == 1 and "VampPrior" in notes[0] and compiled.compiled is None, lines
    else:
        assert not notes and compiled.compiled is not None, lines  # it compiled, and did not fall back
        assert compiled.compiled.backend == backend
    for name, value in eager_weights.items():
        if backend == "inductor":  # fused kernels: float tolerance
            assert torch.allclose(value, compiled_weights[name], rtol=1e-4, atol=1e-5), (name, (value - compiled_weights[name]).abs().max())
        else:
            assert torch.equal(value, compiled_weights[name]), name
    assert compiled_elbo == pytest.approx(eager_elbo, rel=1e-5 if backend == "inductor" else 1e-6)  # the same draws; sums in another order


# graph: bit for bit; inductor (what auto picks for long runs on the CPU, about 10 s of
# compilation each): to float tolerance
BACKENDS = ["graph", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prior, likelihood, posterior", COVERING, ids=["-".join(c) for c in COVERING])
def test_the_compiled_step_equals_the_eager_step_across_the_catalogue(prior, likelihood, posterior, backend, data_files):
    _same_run(data_files, backend, prior=prior, likelihood=likelihood, posterior=posterior)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_every_estimator_that_compiles_equals_its_eager_step(estimator, backend, data_files):
    """With a KL warm-up (beta is an input of the graph, not a constant traced into it);
    tail_adaptive pools the batch, so it takes full batches."""
    full = estimator == "tail_adaptive"
    _same_run(data_files, backend, estimator=estimator,
              batch_size=10_000 if full else 60, epochs=3 if full else 2)


def test_the_cuda_graph_logic_on_its_cpu_stand_in(data_files):
    """The CUDA-graph backend's static buffers (each batch copied into the captured inputs, the
    gradients read from the captured outputs), run by the CPU stand-in of the capture."""
    spec = _spec(data_files)
    eager, _, eager_weights = _train(spec)
    trainer, _, weights = _train(spec, backend="cuda_graph")
    assert trainer.compiled is not None and trainer.compiled._capture.graph is None  # the stand-in ran
    for name, value in eager_weights.items():
        assert torch.equal(value, weights[name]), name


@pytest.mark.parametrize("estimator, discrete, why", [
    ("trace_graph", None, "TraceGraph_ELBO has no traced loss"),
    ("trace_elbo", {"classes": 3}, "branches on a tensor's value"),
])
def test_what_cannot_compile_trains_eagerly_after_one_line(estimator, discrete, why, data_files):
    eager, eager_elbo, _ = _train(_spec(data_files, estimator=estimator, discrete=discrete, compile=False))
    lines = []
    fallback, fallback_elbo, _ = _train(_spec(data_files, estimator=estimator, discrete=discrete, compile=True), lines)
    notes = [line for line in lines if line.startswith("inference.schedule.compile")]
    assert len(notes) == 1 and why in notes[0] and notes[0].endswith("training eagerly"), lines
    assert fallback.compiled is None
    assert fallback_elbo == eager_elbo


def test_the_backend_each_setting_chooses():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_backend(False, cpu) is None
    assert compile_backend(True, cpu) == "graph" and compile_backend(True, cuda) == "cuda_graph"
    assert compile_backend("auto", cpu) == "graph" and compile_backend("auto", cuda) is None
    assert compile_backend("inductor", cpu) == "inductor"
    assert compile_backend("auto", cpu, ["MyLikelihood"]) is None and compile_backend(True, cpu, ["MyLikelihood"]) == "graph"
    # auto: a run too short to win back the tracing stays eager; the explicit settings do not look
    assert compile_backend("auto", cpu, steps=999) is None and compile_backend("auto", cpu, steps=1000) == "graph"
    assert compile_backend(True, cpu, steps=10) == "graph" and compile_backend("inductor", cpu, steps=10) == "inductor"


def test_auto_picks_inductor_for_runs_long_enough_to_win_its_compilation_back(monkeypatch):
    """Inductor's compilation (9-17 s) pays from AUTO_INDUCTOR_STEPS planned steps on, where
    a C++ compiler is installed; without one, or below, auto keeps the replayed graph."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(compiled_module, "cpp_compiler", lambda: "/usr/bin/g++")
    long = AUTO_INDUCTOR_STEPS
    assert compile_backend("auto", cpu, steps=long) == "inductor" and compile_backend("auto", cpu, steps=long - 1) == "graph"
    assert compile_backend("auto", cpu, steps=None) == "graph"  # a run of unknown length: not the long compilation
    assert compile_backend("auto", cpu, ["MyLikelihood"], steps=long) is None
    assert compile_backend("auto", torch.device("cuda"), steps=long) is None
    monkeypatch.setattr(compiled_module, "cpp_compiler", lambda: None)
    assert compile_backend("auto", cpu, steps=long) == "graph"
    monkeypatch.undo()
    monkeypatch.setenv("PATH", "/nonexistent")  # nothing on the path: no compiler, unless $CXX names one
    monkeypatch.delenv("CXX", raising=False)
    assert compiled_module.cpp_compiler() is None
    monkeypatch.setenv("CXX", sys.executable)
    assert compiled_module.cpp_compiler() == sys.executable


def test_a_step_inductor_cannot_compile_is_taken_eagerly_in_one_line(data_files, monkeypatch):
    """Inductor compiles at the first call; when that fails (here: no C++ compiler), the
    trainer says so once and trains eagerly from that very step, with the random state the
    failed call found: the run ends with the eager run's weights exactly."""
    _, eager_elbo, eager_weights = _train(_spec(data_files, compile=False))

    def failing_compile(graph, **options):
        def run(*inputs):
            torch.randn(5)  # a draw before failing: the random state must be put back
            raise RuntimeError("InductorError: no C++ compiler found\nmore")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    lines = []
    trainer, elbo, weights = _train(_spec(data_files, compile="inductor"), lines)
    assert trainer.compiled is None
    said = [line for line in lines if not line.startswith("epoch")]
    assert len(said) == 1 and "Inductor could not compile the step (RuntimeError: InductorError: no C++ compiler found)" in said[0], said
    assert said[0].endswith("training eagerly")
    assert elbo == eager_elbo
    for name, value in eager_weights.items():
        assert torch.equal(weights[name], value), name


def test_auto_leaves_a_users_component_eager_in_one_line(data_files):
    """A component from outside the library may keep Python state from step to step (here a
    call counter that turns the logits NaN after 3 steps), which a traced step would freeze:
    under auto it trains eagerly, and the counter does its work."""
    from faulty import NaNAfter

    spec = _spec(data_files, compile="auto", epochs=1000)  # long enough for auto to compile the library's own
    lines = []
    trainer = _trainer(spec, lines, likelihood=lambda shape: NaNAfter(shape, after=3))
    assert trainer.compiled is None
    assert len(lines) == 1 and "NaNAfter not the library's" in lines[0] and "compile = true" in lines[0], lines
    with pytest.raises(Exception, match="loss is nan"):
        trainer.fit()


def test_auto_compiles_a_long_run_and_leaves_a_short_one_eager(data_files, monkeypatch):
    """compile = auto traces the step only when the run is long enough to win the tracing
    back (AUTO_MIN_STEPS planned steps), without a line either way; from AUTO_INDUCTOR_STEPS
    on it picks Inductor, and says so."""
    for epochs, compiled in ((1, False), (AUTO_MIN_STEPS, True)):
        lines = []
        trainer = _trainer(_spec(data_files, compile="auto", epochs=epochs), lines)
        assert (trainer.steps_per_epoch * epochs >= AUTO_MIN_STEPS) == compiled
        assert trainer.steps_per_epoch * epochs < AUTO_INDUCTOR_STEPS
        assert (trainer.compiled is not None) == compiled and not lines
        assert not compiled or trainer.compiled.backend == "graph"
    # long enough for Inductor (compiled at the first compiled step, not here): one line says
    # why the first steps take seconds
    monkeypatch.setattr(compiled_module, "cpp_compiler", lambda: "/usr/bin/g++")
    lines = []
    trainer = _trainer(_spec(data_files, compile="auto", epochs=AUTO_INDUCTOR_STEPS), lines)
    assert trainer.compiled.backend == "inductor"
    assert len(lines) == 1 and "Inductor compiles the step first" in lines[0] and 'compile = "graph"' in lines[0], lines


@pytest.mark.integration
def test_a_cuda_graph_on_the_cpu_is_refused_in_one_line(tmp_path, capsys):
    from pyro_vae.cli import main

    code = main(["train", "--data", "digits", "--set", "inference.schedule.device=cpu", "--set", "inference.schedule.compile=cuda_graph",
                 "--set", "inference.schedule.epochs=1", "--out", str(tmp_path / "run")])
    assert_one_line_error(code, capsys.readouterr().err, "cuda_graph needs a CUDA device", "use true, graph or inductor")
    assert not (tmp_path / "run").exists()
