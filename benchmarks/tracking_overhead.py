"""What experiment tracking costs an epoch: TensorBoard and MLflow against no tracking,
in one run.

Each setting trains the same spec to a run directory (``train``, with its checkpoint,
metrics and summary written every epoch, as a user's run does); the figure is the wall
time of a whole epoch (steps, validation, checkpoint, metrics and the tracker's logging),
from one epoch's end to the next's, the first epoch left out (start-up). Settings take
turns, in a rotated order per repetition, so that drifts in machine speed hit all; the
table gives the median epoch of each and its ratio to no tracking. The target: within 2%.

Two workloads: the textbook network on the shared binarized MNIST (about 2 s per epoch
on 2 cores: a run users watch), and the default model on the digits (0.06 s per epoch:
the worst case for a fixed cost per epoch; MLflow sends rows at most every 5 s).

    python benchmarks/tracking_overhead.py [--epochs 6] [--repeats 3] [--out runs/bench_tracking]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from pyro_vae.infer.train import resolve_device
from pyro_vae.spec import load_spec
from pyro_vae.workflows.train import train
from train_throughput import DATA, machine, parse_arguments

KINDS = (None, "tensorboard", "mlflow")
WORKLOADS = {
    "mnist textbook": dict(model="bernoulli_mlp", data=str(DATA), epochs=1,
                           overrides=["model.latent_dim=50", "model.encoder.hidden=[400]", "model.decoder.hidden=[400]"]),
    "digits default": dict(model=None, data="digits", epochs=8, overrides=[]),
}


def epoch_walls(workload: dict, kind, epochs: int, out: Path, device: str) -> list[float]:
    epochs *= workload["epochs"]  # the digits' epochs are short: more of them
    overrides = [*workload["overrides"], f"inference.schedule.epochs={epochs}", f"inference.schedule.device={device}",
                 *([f"tracking.kind={kind}"] if kind else [])]
    spec = load_spec(workload["model"], None, workload["data"], overrides)
    ends = []
    train(spec, out, force=True, progress=False, log=lambda _: None, on_epoch=lambda _: ends.append(time.perf_counter()))
    return [b - a for a, b in zip(ends, ends[1:])]


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=6)
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--out", default="runs/bench_tracking")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    print(f"{machine(resolve_device(args.device))}; {args.epochs} epochs per run on MNIST, 8 x as many on the digits "
          "(the first left out), "
          f"{args.repeats} runs per setting, in turns")
    print(f"{'workload':<16}{'tracking':<13}{'s/epoch':>9}{'ratio':>8}")
    for name, workload in WORKLOADS.items():
        walls = {kind: [] for kind in KINDS}
        for repeat in range(args.repeats):
            order = KINDS[repeat % len(KINDS):] + KINDS[:repeat % len(KINDS)]
            for kind in order:
                out = Path(args.out) / f"{name.split()[0]}-{kind or 'none'}"
                walls[kind] += epoch_walls(workload, kind, args.epochs, out, args.device)
        base = statistics.median(walls[None])
        for kind in KINDS:
            median = statistics.median(walls[kind])
            print(f"{name:<16}{kind or 'none':<13}{median:>9.4f}{median / base:>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
