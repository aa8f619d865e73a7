"""The cost of a second stochastic layer: the library's two-layer training step against a
plain-PyTorch two-layer reference with the same networks, beside the one-layer pair, in
one run.

One layer: the textbook network (784-400-50-400-784, softplus, Bernoulli likelihood).
Two layers (bottom-up, Burda et al., 2016): the same z_1 (50) and decoder, and above it
z_2 (20) with q(z_2|z_1) and p(z_1|z_2) each an MLP with 200 softplus units. Both sides
take the single-sample ELBO, scaled by N/B, with fused Adam 1e-3 on statically binarized
MNIST, reading the loss every step; the library side is ``Trainer.run_epoch`` eager
(``compile = false``) and compiled (``--compile``, default ``graph``). Epochs alternate
between the sides, so drifts in machine speed hit all of them; figures are the median
epoch times and the ratios library / plain for each depth. The goal: the two-layer ratio
equals the one-layer ratio (a second layer costs the library no more than it costs PyTorch).

    python benchmarks/layer_throughput.py [--batch-sizes 64 128 256] [--epochs 3] [--compile graph] [--device auto]
"""

from __future__ import annotations

import math
import statistics
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.data import Dataset
from pyro_vae.devices import resolve_device
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec
from train_throughput import DATA, library_epoch, machine, parse_arguments, plain_epoch

Z1, Z2, HIDDEN, UPPER = 50, 20, 400, 200


def layer_spec(layers: int, batch_size: int, device: str, compile) -> Spec:
    mlp = {"kind": "mlp", "hidden": [HIDDEN], "activation": "softplus"}
    upper = {"kind": "mlp", "hidden": [UPPER], "activation": "softplus"}
    model = {"latent_dim": Z1, "encoder": mlp, "decoder": mlp}
    if layers == 2:
        model["upper_layers"] = [{"latent_dim": Z2, "encoder": upper, "prior_network": upper}]
    return Spec.from_dict({"model": model, "inference": {
        "optimizer": {"kind": "adam", "lr": 1e-3},
        "schedule": {"batch_size": batch_size, "device": device, "epochs": 1000, "compile": compile}}})


def _gaussian(h, d):
    return h[..., :d], F.softplus(h[..., d:]) + 1e-4


def _log_normal(value, loc, scale):
    return (-0.5 * ((value - loc) / scale).square() - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class PlainTwoLayers(nn.Module):
    """The same two-layer network and single-sample ELBO in plain PyTorch (``layers = 1``:
    the textbook one-layer VAE)."""

    def __init__(self, layers: int, features=784):
        super().__init__()
        self.layers = layers
        self.encoder = nn.Sequential(nn.Linear(features, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 2 * Z1))
        self.decoder = nn.Sequential(nn.Linear(Z1, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, features))
        if layers == 2:
            self.upper = nn.Sequential(nn.Linear(Z1, UPPER), nn.Softplus(), nn.Linear(UPPER, 2 * Z2))
            self.down = nn.Sequential(nn.Linear(Z2, UPPER), nn.Softplus(), nn.Linear(UPPER, 2 * Z1))

    def loss(self, x, num_data):
        loc1, scale1 = _gaussian(self.encoder(x), Z1)
        z1 = loc1 + scale1 * torch.randn_like(loc1)
        log_w = -F.binary_cross_entropy_with_logits(self.decoder(z1), x, reduction="none").sum(-1) - _log_normal(z1, loc1, scale1)
        if self.layers == 1:
            log_w = log_w + _log_normal(z1, torch.zeros_like(z1), torch.ones_like(z1))
        else:
            loc2, scale2 = _gaussian(self.upper(z1), Z2)
            z2 = loc2 + scale2 * torch.randn_like(loc2)
            log_w = (log_w + _log_normal(z1, *_gaussian(self.down(z2), Z1)) + _log_normal(z2, torch.zeros_like(z2), torch.ones_like(z2))
                     - _log_normal(z2, loc2, scale2))
        return -(num_data / len(x)) * log_w.sum()


def measure(batch_size: int, epochs: int, device_choice: str, compile_backend: str) -> dict:
    device = resolve_device(device_choice)
    arrays = np.load(DATA)
    train = torch.as_tensor(arrays["train"], dtype=torch.float32)
    data = Dataset({"train": train, "valid": torch.as_tensor(arrays["valid"][:1000], dtype=torch.float32)}, {}, (784,),
                   str(DATA)).to(device)
    sides = {}
    for layers in (1, 2):
        for label, compile in (("eager", False), ("compiled", compile_backend)):
            spec = layer_spec(layers, batch_size, device_choice, compile)
            torch.manual_seed(0)
            vae = build_vae(spec.model, (784,), len(train)).to(device)
            vae.name = f"l{layers}_{label}"
            trainer = Trainer(vae, data, spec.inference, progress=False)
            sides[f"library{layers}_{label}"] = lambda t=trainer: library_epoch(t)
        torch.manual_seed(0)
        model = PlainTwoLayers(layers).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        generator = torch.Generator(device=device).manual_seed(0)
        sides[f"plain{layers}"] = lambda m=model, o=optimizer, g=generator: plain_epoch(m, o, data.split("train"), batch_size, g)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for run in sides.values():  # warm-up: compilation, allocator, caches
        run()
    for _ in range(epochs):
        for name, run in sides.items():
            times[name].append(run())
    median = {name: statistics.median(t) for name, t in times.items()}
    row = {"batch_size": batch_size, **{f"{name}_s": t for name, t in median.items()}}
    for layers in (1, 2):
        for label in ("eager", "compiled"):
            row[f"ratio{layers}_{label}"] = median[f"library{layers}_{label}"] / median[f"plain{layers}"]
    return row


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
        parser.add_argument("--compile", default="graph", help="the compiled side's inference.schedule.compile")
        parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each side (after one warm-up epoch)")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    device = resolve_device(args.device)
    print(f"device: {device} ({machine(device)}), torch {torch.__version__}; seconds per epoch (medians), ratio library / plain")
    print("| batch | plain 1 layer | eager | ratio | compiled | ratio | plain 2 layers | eager | ratio | compiled | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch_size in args.batch_sizes:
        r = measure(batch_size, args.epochs, args.device, args.compile)
        cells = [f"{r['batch_size']}"]
        for layers in (1, 2):
            cells += [f"{r[f'plain{layers}_s']:.3f}", f"{r[f'library{layers}_eager_s']:.3f}", f"{r[f'ratio{layers}_eager']:.2f}",
                      f"{r[f'library{layers}_compiled_s']:.3f}", f"{r[f'ratio{layers}_compiled']:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
