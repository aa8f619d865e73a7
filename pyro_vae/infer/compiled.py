"""A compiled training step (``inference.schedule.compile``).

An eager SVI step runs a good deal of Python: the guide and the model under poutine's
messengers, every distribution checking and broadcasting its arguments, the ELBO
walking the traces. For a given model and batch shape that structure is the same at
every step; only the numbers change. So the step is traced once with ``torch.fx``'s
``make_fx``: guide, model, the estimator's loss and the backward pass become one graph
of tensor operations, and Pyro's Python runs once instead of at every step. The
random draws are operations of that graph on the global generator, in the eager
step's order, so the compiled step draws the numbers the eager step draws. ``make_fx``
refuses Python that branches on a tensor's value, so a graph that traced is the step,
with one caveat: Python state a component changes from step to step (a call counter, a
schedule kept in a float) is read once, at the trace, and frozen. The library's own
components keep none; a user's component might, so ``auto`` leaves a model with one
eager (:func:`outside_library`), and ``true`` traces it as asked.

The graph then runs by one of three backends (:data:`BACKENDS`):

- ``graph``: the traced graph replayed as it is (bit-identical to the eager step);
- ``inductor``: the graph compiled by ``torch.compile`` (fused kernels; equal to
  float tolerance, with Inductor's random numbers replaced by eager's);
- ``cuda_graph``: the graph captured as a CUDA graph with static input and output
  buffers; each step copies the batch in and replays (graph-safe RNG: torch
  registers the default generator's Philox offset with the graph). The capture is
  behind :class:`Capture`, whose CPU stand-in replays by calling, so the static-buffer
  logic is tested without a GPU.

The optimizer stays outside the graph: the fused Adam is one kernel, and gradient
clipping and the all-reduce of several processes keep working unchanged.

Estimators whose loss is a pure function of the traces are supported: each declares its
``traced_loss`` (``infer/estimators.py``): ``trace_elbo`` and ``trace_mean_field`` on
reparameterized latents, the importance-weighted family and ``tail_adaptive``. Pyro's own
loss code cannot be traced as it is: it reads the loss with ``.item()``. Anything else (a
score-function or enumerated discrete site, a relaxed temperature that changes every
step, Pyro's JIT, a component that branches on values) raises
:class:`~pyro_vae.errors.NotTraceable`,
and the trainer says so in one line and trains eagerly.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Callable, Optional, Sequence

import pyro
import torch
from torch import Tensor

from ..errors import NotTraceable, SpecError
from ..model.traits import traits_of

BACKENDS = ("graph", "inductor", "cuda_graph")


def outside_library(vae) -> list[str]:
    """The classes of ``vae``'s modules that are neither the library's nor torch's or Pyro's:
    a user's components, which ``auto`` does not trace (see the module docstring)."""
    own = ("pyro_vae", "torch", "pyro")
    return sorted({type(m).__qualname__ for m in vae.modules() if type(m).__module__.split(".")[0] not in own})


AUTO_MIN_STEPS = 1000
AUTO_INDUCTOR_STEPS = 25_000


def cpp_compiler() -> Optional[str]:
    """The C++ compiler Inductor's CPU code needs (``$CXX``, else g++ or clang++), if any."""
    return next(filter(None, (shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++") if c)), None)


def compile_backend(setting, device: torch.device, foreign: Sequence[str] = (), steps: Optional[int] = None) -> Optional[str]:
    """The backend ``inference.schedule.compile`` asks for on this device, or None (eager).

    ``true``: a CUDA graph on CUDA, else the replayed graph; a backend's name: that one
    (``cuda_graph`` only on CUDA); ``auto``, on the CPU, by the run's planned ``steps``,
    where each choice was measured to win back its one-off cost (BENCHMARKS.md, "Across
    batch sizes, with the compiled step": ``benchmarks/train_throughput.py`` and
    ``step_breakdown.py``):

    - at least AUTO_MIN_STEPS: the replayed graph, faster than the eager step at every
      batch size measured, once its tracing (well under a second) is paid back;
    - at least AUTO_INDUCTOR_STEPS, where a C++ compiler is installed: ``inductor``,
      faster again than the graph, once its compilation (seconds, cached afterwards) is
      paid back;
    - shorter runs train eagerly.

    Eager elsewhere, where no measurement was made (no GPU was available), and for a
    model with ``foreign`` (user-written) components.
    """
    if setting is False:
        return None
    if setting == "cuda_graph" and device.type != "cuda":
        raise SpecError(f"inference.schedule.compile: cuda_graph needs a CUDA device, and training runs on {device.type}; "
                        "use true, graph or inductor")
    if setting is True:
        return "cuda_graph" if device.type == "cuda" else "graph"
    if setting == "auto":
        if device.type != "cpu" or foreign or (steps is not None and steps < AUTO_MIN_STEPS):
            return None
        return "inductor" if steps is not None and steps >= AUTO_INDUCTOR_STEPS and cpp_compiler() else "graph"
    return setting


def traced_loss(estimator, model, guide, *args) -> tuple[Tensor, Tensor]:
    """(loss, surrogate) as tensors, from the estimator's own ``traced_loss`` (each estimator
    declares it beside its eager loss, ``infer/estimators.py``); else
    :class:`~pyro_vae.errors.NotTraceable`."""
    if traits_of(estimator).jit:
        raise NotTraceable("inference.estimator.jit = true traces the step with Pyro's JIT already")
    loss = getattr(estimator, "traced_loss", None)
    if loss is None:
        raise NotTraceable(f"the estimator {type(estimator).__name__} has no traced loss")
    return loss(model, guide, *args)


# --- capture: CUDA graphs, and their CPU stand-in -------------------------------------------


class Capture:
    """Runs ``fn`` on fixed input buffers into fixed output buffers: ``capture(fn, inputs)``
    once, then per step copy the new inputs into ``inputs`` and ``replay()``.

    On CUDA a ``torch.cuda.CUDAGraph`` (warmed up on a side stream first, as capture
    requires); elsewhere the stand-in that calls ``fn`` and copies its results into the
    outputs, which is the same contract without the graph."""

    def __init__(self, device: torch.device):
        self.device = device
        self.graph = torch.cuda.CUDAGraph() if device.type == "cuda" else None
        self.outputs: Optional[list] = None

    def capture(self, fn: Callable, inputs: Sequence[Tensor], warmup: int = 3) -> list:
        self.fn, self.inputs = fn, inputs
        if self.graph is None:  # the first replay draws what this call drew
            with _rng_kept(self.device):
                self.outputs = [None if t is None else t.clone() for t in fn(*inputs)]
            return self.outputs
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        with torch.cuda.graph(self.graph):
            self.outputs = list(fn(*inputs))
        return self.outputs

    def replay(self) -> list:
        if self.graph is not None:
            self.graph.replay()
        else:
            for out, new in zip(self.outputs, self.fn(*self.inputs)):
                if out is not None:
                    out.copy_(new)
        return self.outputs


# --- the compiled step ---------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    """``Type: the first line of the message`` (at most 120 characters of it), for one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"


def _rng_kept(device: torch.device):
    """The global random states restored afterwards (tracing draws numbers the step must draw again)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class CompiledStep:
    """The loss and gradients of one SVI step as a traced graph (see the module docstring).

    ``step(x, index, beta)`` sets ``.grad`` of the parameters (not of those the loss
    does not reach, as in eager) and returns the loss as a 0-d tensor on the device.
    The graph is traced at the first call, for that batch shape; a call with another
    shape traces again."""

    def __init__(self, vae, estimator, params: Sequence[Tensor], backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
        self.vae, self.estimator, self.params, self.backend = vae, estimator, list(params), backend
        self._shape = None

    def _joint(self, x: Tensor, index: Tensor, beta: Tensor):
        self.vae.beta = beta
        loss, surrogate = traced_loss(self.estimator, self.vae.model, self.vae.guide, x, index)
        grads = torch.autograd.grad(surrogate, self.params, allow_unused=True)
        self._targets = [p for p, g in zip(self.params, grads) if g is not None]
        return (loss, *(g for g in grads if g is not None))

    def trace(self, x: Tensor, index: Tensor, beta: Tensor):
        """The graph of ``_joint`` at these inputs (NotTraceable when it cannot be traced)."""
        from torch.fx.experimental.proxy_tensor import make_fx

        with _rng_kept(x.device), pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return make_fx(lambda x, index, beta: self._joint(x, index, beta))(x, index, beta)
            except NotTraceable:
                raise
            except Exception as exc:  # make_fx refuses value-dependent Python, among others
                if "get value out of a tracing tensor" in str(exc):
                    raise NotTraceable("a part of the model or estimator branches on a tensor's value in Python") from exc
                raise NotTraceable(f"the step cannot be traced ({_first_line(exc)})") from exc
            finally:
                self.vae.beta = float(beta)

    def _prepare(self, x: Tensor, index: Tensor, beta: Tensor) -> None:
        graph = self.trace(x, index, beta)
        if self.backend == "inductor":
            import torch._inductor.config as inductor_config

            compiled = torch.compile(graph, dynamic=False)

            def run(*inputs):  # eager's random numbers, not Inductor's own Philox stream
                with inductor_config.patch(fallback_random=True):
                    return compiled(*inputs)

            self._run = run
        elif self.backend == "cuda_graph":
            self._capture = Capture(x.device)
            self._inputs = [x.clone(), index.clone(), beta.clone()]
            self._capture.capture(graph, self._inputs)
            self._run = self._replay
        else:
            self._run = graph
        self._shape = (x.shape, x.dtype, index.shape)

    def _first_run(self, x, index, beta):
        """The first call, in which Inductor compiles: its failure (no working C++ compiler,
        an operation it cannot lower) is NotTraceable, the random state left as it was, so
        the trainer takes this step eagerly."""
        if self.backend != "inductor":
            return self._run(x, index, beta)
        cuda = x.device.type == "cuda"
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(x.device) if cuda else None
        try:
            return self._run(x, index, beta)
        except Exception as exc:
            torch.set_rng_state(rng[0])
            if cuda:
                torch.cuda.set_rng_state(rng[1], x.device)
            self._shape = None
            raise NotTraceable(f"Inductor could not compile the step ({_first_line(exc)})") from exc

    def _replay(self, x, index, beta):
        for buffer, value in zip(self._inputs, (x, index, beta)):
            buffer.copy_(value)
        return self._capture.replay()

    def step(self, x: Tensor, index: Tensor, beta: float) -> Tensor:
        # float64, as eager's Python float: beta * N/B then rounds as in the eager step (not on MPS, which has no float64)
        beta_t = torch.tensor(float(beta), dtype=torch.float32 if x.device.type == "mps" else torch.float64, device=x.device)
        if self._shape != (x.shape, x.dtype, index.shape):
            self._prepare(x, index, beta_t)
            loss, *grads = self._first_run(x, index, beta_t)
        else:
            loss, *grads = self._run(x, index, beta_t)
        for p, g in zip(self._targets, grads):
            p.grad = g
        return loss
