"""Where one training step's time goes, in microseconds: the library's eager step, its
compiled step, and plain PyTorch with the same fused Adam (issue 15, part 1).

The textbook network of ``train_throughput.py`` (784-400-50-400-784, softplus, Bernoulli,
Trace_ELBO, fused Adam 1e-3) on statically binarized MNIST. Each step is cut by timers
(``time.perf_counter_ns``; on CUDA with a synchronize before each reading) into

* ``gather``: the batch's rows taken from the training array;
* ``networks``: encoder, reparameterized draw and decoder, called directly (in the library
  step the same calls run inside the traces; timed here on their own, with autograd on);
* ``guide trace`` / ``model replay``: ``poutine.trace(guide)`` and
  ``poutine.trace(replay(model))``, networks included;
* ``log-densities``: ``compute_log_prob`` of both traces and the ELBO's sum (plain: the
  hand-written log-densities and their sum);
* ``backward`` and ``optimizer`` (the fused Adam's step and zero_grad);
* ``SVI bookkeeping``: a whole ``SVI.step`` timed on its own, less the parts above (its
  parameter capture, Trace_ELBO's checks, reading the loss).

so "Pyro's trace and replay" is guide trace + model replay - networks. The compiled step
(``inference.schedule.compile = true``) is one replayed graph and is timed whole. Medians
over ``--steps`` steps after a warm-up; the phases of the library are timed in a step of
their own (a manual Trace_ELBO step: same traces, same loss, same gradients), alternating
with the whole ``SVI.step`` and with the plain and compiled steps.

    python benchmarks/step_breakdown.py [--batch-sizes 32 128 256] [--steps 300] [--compile true] [--device auto]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from pyro_vae.data import Dataset
from pyro_vae.devices import resolve_device
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae

from train_throughput import DATA, PlainVAE, machine, parse_arguments, textbook_spec


class Clock:
    """Accumulates named intervals of one step (synchronizing first on CUDA)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, list[float]] = defaultdict(list)
        self.last = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.last = time.perf_counter_ns()

    def lap(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter_ns()
        self.times[name].append((now - self.last) / 1000)
        self.last = now

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.times.items()}


def library_phases(trainer: Trainer, train: torch.Tensor, rows: torch.Tensor, clock: Clock) -> None:
    """One Trace_ELBO step by hand (the same traces, loss and gradients as ``SVI.step``),
    each phase timed."""
    vae = trainer.vae
    clock.start()
    x = train[rows]
    clock.lap("gather")
    vae.decoder(vae.posterior(vae.encoder(vae.encoder_input(x))).rsample())  # on the side: the networks alone
    clock.lap("networks")
    guide_trace = poutine.trace(vae.guide).get_trace(x, rows)
    clock.lap("guide trace")
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, rows)
    clock.lap("model replay")
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    loss = -(sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
             - sum(site["log_prob_sum"] for site in guide_trace.nodes.values() if site["type"] == "sample"))
    clock.lap("log-densities")
    loss.backward()
    clock.lap("backward")
    trainer.optim(trainer.optim.params)
    loss.item()
    clock.lap("optimizer")


def plain_phases(model: PlainVAE, optimizer, train: torch.Tensor, rows: torch.Tensor, clock: Clock) -> None:
    clock.start()
    x = train[rows]
    clock.lap("gather")
    outputs = model.networks(x)
    clock.lap("networks")
    loss = model.objective(x, len(train), *outputs)
    clock.lap("log-densities")
    loss.backward()
    clock.lap("backward")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()
    clock.lap("optimizer")


def whole_step(step, clock: Clock) -> None:
    clock.start()
    step()
    clock.lap("step")


def measure(batch_size: int, steps: int, device_choice: str, backend: str = "true") -> dict[str, dict[str, float]]:
    device = resolve_device(device_choice)
    arrays = np.load(DATA)
    train = torch.as_tensor(arrays["train"], dtype=torch.float32)
    data = Dataset({"train": train, "valid": train[:1000]}, {}, (784,), str(DATA)).to(device)
    train = data.split("train")
    trainers = {}
    for name, compile in (("eager", "false"), ("compiled", backend)):
        spec = textbook_spec(batch_size, device_choice, compile=compile)
        torch.manual_seed(0)
        vae = build_vae(spec.model, (784,), len(train)).to(device)
        vae.name = name  # two VAEs in one process: their own names in Pyro's param store
        trainers[name] = Trainer(vae, data, spec.inference, progress=False)
    eager, compiled = trainers["eager"], trainers["compiled"]
    torch.manual_seed(0)
    plain = PlainVAE().to(device)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)

    def compiled_step(x, rows):
        loss = compiled.compiled.step(x, rows, 1.0)
        compiled.optim(compiled.optim.params)
        loss.item()

    clocks = {name: Clock(device) for name in ("library", "svi", "compiled", "plain")}
    generator = torch.Generator(device=device).manual_seed(0)
    with pyro.validation_enabled(False):
        for step in range(steps + 20):  # 20 warm-up steps: allocations, caches, the compiled step's trace
            clock = clocks if step >= 20 else {name: Clock(device) for name in clocks}
            rows = torch.randint(len(train), (batch_size,), generator=generator, device=device)
            library_phases(eager, train, rows, clock["library"])
            whole_step(lambda: eager.svi.step(train[rows], rows), clock["svi"])
            whole_step(lambda: compiled_step(train[rows], rows), clock["compiled"])
            plain_phases(plain, plain_optimizer, train, rows, clock["plain"])
    return {name: clock.medians() for name, clock in clocks.items()}


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
        parser.add_argument("--steps", type=int, default=300, help="timed steps of each side (after 20 warm-up steps)")
        parser.add_argument("--compile", default="true", help="the compiled side's inference.schedule.compile (true, graph, inductor, cuda_graph)")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    device = resolve_device(args.device)
    print(f"device: {device} ({machine(device)}), torch {torch.__version__}, pyro {pyro.__version__}")
    for batch_size in args.batch_sizes:
        m = measure(batch_size, args.steps, args.device, args.compile)
        lib, plain = m["library"], m["plain"]
        trace = lib["guide trace"] + lib["model replay"] - lib["networks"]
        svi = m["svi"]["step"]  # gather included, as in the compiled step's figure
        by_hand = sum(lib.values()) - lib["networks"]  # the networks ran twice: on the side and in the traces
        rows = [
            ("gather", lib["gather"], plain["gather"]),
            ("networks (forward)", lib["networks"], plain["networks"]),
            ("Pyro's trace and replay (less the networks)", trace, None),
            ("log-densities and their sum", lib["log-densities"], plain["log-densities"]),
            ("backward", lib["backward"], plain["backward"]),
            ("optimizer (fused Adam) and reading the loss", lib["optimizer"], plain["optimizer"]),
            ("SVI.step's own bookkeeping (whole - by hand)", svi - by_hand, None),
            ("whole step", svi, sum(plain.values())),
            ("compiled step, whole", m["compiled"]["step"], None),
        ]
        print(f"\nbatch {batch_size}: microseconds per step, medians of {args.steps} steps")
        print(f"{'phase':<48} {'library':>9} {'plain':>9}")
        for label, library_us, plain_us in rows:
            print(f"{label:<48} {library_us:>9.0f} {'' if plain_us is None else f'{plain_us:.0f}':>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
