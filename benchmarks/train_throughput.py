"""Training throughput of the library against plain PyTorch, in one run.

The textbook network (784-400-50-400-784, softplus, Bernoulli likelihood, Adam 1e-3) on
statically binarized MNIST. The library side is ``pyro-vae train``'s own loop
(``Trainer.run_epoch``: SVI with Trace_ELBO); the reference is the same network and
objective written in plain PyTorch below: the same single-sample Monte Carlo ELBO
log p(x|z) + log p(z) - log q(z|x), scaled by N/B, with the same data on the same
device, the same batch size and the same optimizer, reading the loss every step as
the library does. Epochs alternate, so drifts in machine speed hit all sides; the
figures are the median epoch time of each and the ratio library / plain.

The reference uses ``torch.optim.Adam`` as plain PyTorch is usually written; the
library steps a fused Adam. A second reference, plain PyTorch with the same fused
Adam, isolates what Pyro's tracing and distributions cost on top of the network:
``ratio_fused`` = library / that loop. ``ratio_jit`` is the library with Pyro's JIT
(``[inference.estimator] jit = true``) against the usual plain loop, and
``ratio_compiled_fused`` the library with its compiled step (``inference.schedule.compile``,
``--compile`` picks the backend) against the fused plain loop. The library side itself
runs eagerly (``compile = false``).

    python benchmarks/train_throughput.py [--batch-sizes 16 32 64 128 256 1024] [--epochs 5] [--compile true] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.data import Dataset
from pyro_vae.devices import resolve_device
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binarized_mnist.npz"


def textbook_spec(batch_size: int, device: str, jit: bool = False, compile="false") -> Spec:
    mlp = {"kind": "mlp", "hidden": [400], "activation": "softplus"}
    return Spec.from_dict(
        {
            "model": {"latent_dim": 50, "encoder": mlp, "decoder": mlp},
            "inference": {
                "estimator": {"kind": "trace_elbo", "jit": jit},
                "schedule": {"batch_size": batch_size, "device": device, "epochs": 1000,
                             "compile": {"false": False, "true": True}.get(compile, compile)},
            },
            "data": {"path": str(DATA)},
        }
    )


class PlainVAE(nn.Module):
    """The same network as the library's, in plain PyTorch."""

    def __init__(self, features=784, hidden=400, latent=50):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, features))

    def networks(self, x):
        """Encoder, reparameterized draw z = loc + scale * eps, decoder: (z, eps, scale, logits)."""
        h = self.encoder(x)
        loc, scale = h[:, : self.latent], F.softplus(h[:, self.latent :]) + 1e-4
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        return z, eps, scale, self.decoder(z)

    @staticmethod
    def objective(x, num_data, z, eps, scale, logits):
        """-(N/B) sum of log p(x|z) + log p(z) - log q(z|x) over the batch."""
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * (eps.square() + math.log(2 * math.pi)) - scale.log()).sum(-1)
        return -(num_data / len(x)) * (log_px_z + log_pz - log_qz).sum()

    def loss(self, x, num_data):
        return self.objective(x, num_data, *self.networks(x))


def plain_epoch(model, optimizer, train, batch_size, generator) -> float:
    n = len(train)
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator, device=train.device)
    for i in range(math.ceil(n / batch_size)):
        x = train[order[i * batch_size : (i + 1) * batch_size]]
        loss = model.loss(x, n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    if train.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def library_epoch(trainer: Trainer) -> float:
    trainer.state.step_in_epoch, trainer.state.epoch_seconds = 0, 0.0
    start = time.perf_counter()
    trainer.run_epoch()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(batch_size: int, epochs: int, device_choice: str, compile_backend: str = "true") -> dict:
    device = resolve_device(device_choice)
    arrays = np.load(DATA)
    train = torch.as_tensor(arrays["train"], dtype=torch.float32)
    valid = torch.as_tensor(arrays["valid"], dtype=torch.float32)
    data = Dataset({"train": train, "valid": valid}, {}, (784,), str(DATA)).to(device)
    sides = {}
    for name, jit, compile in (("library", False, "false"), ("library_jit", True, "false"),
                               ("library_compiled", False, compile_backend)):
        spec = textbook_spec(batch_size, device_choice, jit, compile)
        torch.manual_seed(0)
        vae = build_vae(spec.model, (784,), len(train)).to(device)
        vae.name = name  # two VAEs in one process: their own names in Pyro's param store
        trainer = Trainer(vae, data, spec.inference, progress=False)
        sides[name] = lambda t=trainer: library_epoch(t)
    generator = torch.Generator(device=device).manual_seed(0)
    train_on_device = data.split("train")
    for name, options in (("plain", {}), ("plain_fused", {"fused": True})):
        torch.manual_seed(0)
        model = PlainVAE().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
        sides[name] = lambda m=model, o=optimizer: plain_epoch(m, o, train_on_device, batch_size, generator)
    times: dict[str, list[float]] = {name: [] for name in sides}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated")
        for run in sides.values():  # warm-up: first-step validation, JIT compilation, allocator, caches
            run()
        for _ in range(epochs):
            for name, run in sides.items():
                times[name].append(run())
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "batch_size": batch_size,
        "library_s": median["library"],
        "plain_s": median["plain"],
        "plain_fused_s": median["plain_fused"],
        "library_jit_s": median["library_jit"],
        "library_compiled_s": median["library_compiled"],
        "ratio_compiled_fused": median["library_compiled"] / median["plain_fused"],
        "ratio": median["library"] / median["plain"],
        "ratio_fused": median["library"] / median["plain_fused"],
        "ratio_jit": median["library_jit"] / median["plain"],
        "library_examples_per_s": len(train) / median["library"],
    }


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def parse_arguments(doc: str, argv, add) -> argparse.Namespace | None:
    """A benchmark's arguments (``add`` adds its own, --device is common); None, with a
    note, when the shared data are absent."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add(parser)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (the shared binarized MNIST)", file=sys.stderr)
        return None
    return args


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 1024])
        parser.add_argument("--compile", default="true", help="the compiled side's inference.schedule.compile (true, graph, inductor, cuda_graph)")
        parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each side (after one warm-up epoch)")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    device = resolve_device(args.device)
    print(f"device: {device} ({machine(device)}), torch {torch.__version__}")
    print(f"{'batch':>6} {'library':>9} {'plain':>9} {'ratio':>6}   {'plain fused':>11} {'ratio_fused':>11}   "
          f"{'library jit':>11} {'ratio_jit':>9}   {'compiled':>9} {'compiled/fused':>14}   (seconds per epoch, medians)")
    for batch_size in args.batch_sizes:
        r = measure(batch_size, args.epochs, args.device, args.compile)
        print(
            f"{r['batch_size']:>6} {r['library_s']:>9.3f} {r['plain_s']:>9.3f} {r['ratio']:>6.3f}   "
            f"{r['plain_fused_s']:>11.3f} {r['ratio_fused']:>11.3f}   {r['library_jit_s']:>11.3f} {r['ratio_jit']:>9.3f}   "
            f"{r['library_compiled_s']:>9.3f} {r['ratio_compiled_fused']:>14.3f}", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
