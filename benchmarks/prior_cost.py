"""What each prior costs per training epoch, against the standard normal, in one run.

The networks of ``benchmarks/priors.py`` (784-300-300-40-300-300-784 softplus MLPs,
Bernoulli likelihood, Adam 1e-3, batches of 128) on statically binarized MNIST, trained
with ``pyro-vae train``'s own loop, one epoch per prior in turn (so drifts in machine
speed hit all of them), after a warm-up epoch each; the figures are median seconds per
epoch and the ratio to the standard normal prior.

``vamp_broadcast`` is the VampPrior scored the way it was before issue 15: each draw
against the 500 components as a (batch, 500, 40) tensor of differences, which a data
plate's expansion also made the backward pass materialize. The library now scores
diagonal Gaussian components with two matrix products (``priors._Mixture``).

    python benchmarks/prior_cost.py [--epochs 3] [--priors standard_normal,mixture,vamp,vamp_broadcast,flow]
"""

from __future__ import annotations

import statistics
import sys
from contextlib import contextmanager

import numpy as np
import torch

import pyro_vae.model.priors as priors
from pyro_vae.data import Dataset
from pyro_vae.devices import resolve_device
from pyro_vae.infer.train import Trainer
from pyro_vae.model import build_vae
from pyro_vae.spec import Spec
from train_throughput import DATA, library_epoch, machine, parse_arguments

PRIORS = {
    "standard_normal": {"kind": "standard_normal"},
    "mixture": {"kind": "mixture", "components": 10},
    "vamp": {"kind": "vamp", "components": 500},
    "vamp_broadcast": {"kind": "vamp", "components": 500},
    "flow": {"kind": "flow", "layers": 2},
}


@contextmanager
def broadcast_scoring(on: bool):
    """The mixture scored by torch's MixtureSameFamily.log_prob (the (B, K, D) form) while on."""
    original = priors._diagonal_gaussians
    if on:
        priors._diagonal_gaussians = lambda components: None
    try:
        yield
    finally:
        priors._diagonal_gaussians = original


def trainer_for(prior: dict, data: Dataset, device: str, name: str) -> Trainer:
    mlp = {"kind": "mlp", "hidden": [300, 300], "activation": "softplus"}
    spec = Spec.from_dict({
        "model": {"latent_dim": 40, "encoder": mlp, "decoder": mlp, "prior": prior},
        # eager steps, as measured in BENCHMARKS.md (a traced step would also freeze the broadcast patch at its trace)
        "inference": {"schedule": {"batch_size": 128, "device": device, "epochs": 1000, "compile": False}},
        "data": {"path": str(DATA)},
    })
    torch.manual_seed(0)
    vae = build_vae(spec.model, (784,), len(data.split("train"))).to(data.split("train").device)
    vae.name = name  # several VAEs in one process: their own names in Pyro's param store
    return Trainer(vae, data, spec.inference, progress=False)


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=3, help="timed epochs per prior (after one warm-up epoch)")
        parser.add_argument("--priors", default=",".join(PRIORS), help="comma-separated, of: " + ", ".join(PRIORS))

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    chosen = [p.strip() for p in args.priors.split(",") if p.strip()]
    if not chosen or any(p not in PRIORS for p in chosen) or "standard_normal" not in chosen:
        print(f"--priors: give standard_normal and any of {', '.join(PRIORS)}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    arrays = np.load(DATA)
    data = Dataset({split: torch.as_tensor(arrays[split], dtype=torch.float32) for split in ("train", "valid")},
                   {}, (784,), str(DATA)).to(device)
    trainers = {name: trainer_for(PRIORS[name], data, args.device, name) for name in chosen}
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for turn in range(args.epochs + 1):
        for name, trainer in trainers.items():
            with broadcast_scoring(name == "vamp_broadcast"):
                seconds = library_epoch(trainer)
            if turn:  # the first turn warms up
                times[name].append(seconds)
    print(f"device: {device} ({machine(device)}), torch {torch.__version__}")
    reference = statistics.median(times["standard_normal"])
    print(f"{'prior':<16} {'s/epoch':>8} {'x standard':>10}")
    for name, t in times.items():
        print(f"{name:<16} {statistics.median(t):>8.2f} {statistics.median(t) / reference:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
