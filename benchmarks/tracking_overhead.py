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

On this 2-core machine those end-to-end ratios move by 10-25% between runs, so the script
also measures the tracker's own cost directly: ``--rows`` metrics rows through
``log_rows``, one every ``--pace`` seconds (an epoch of the digits, slept, so that the
process's CPU time is the tracker's), then a wait for every write queued so far (not
``finish``'s one-time sends): the training thread's time per row, and the process's CPU
time per row with the writer threads' work included.

    python benchmarks/tracking_overhead.py [--epochs 6] [--repeats 3] [--rows 200] [--pace 0.046] [--out runs/bench_tracking]
"""

from __future__ import annotations

import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

from pyro_vae.devices import resolve_device
from pyro_vae.spec import load_spec
from pyro_vae.tracking import TRACKERS
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


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tracker_cost(kind: str, rows: int, pace: float, folder: Path) -> tuple[float, float]:
    """(training thread ms per row, process CPU ms per row) of ``kind`` logging ``rows``
    metrics rows, one every ``pace`` seconds."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tracker = TRACKERS.build({"kind": kind})
    tracker.start(folder, {"model": {"latent_dim": 2}}, "[model]\nlatent_dim = 2\n", False, [])
    row = {"epoch": 0, "train_elbo": -100.1, "val_elbo": -101.2, "kl": 20.3, "reconstruction": -80.5, "beta": 1.0,
           "seconds": 0.05, "examples_per_second": 30000.0}
    in_thread, cpu = 0.0, process_cpu()
    for epoch in range(1, rows + 1):
        time.sleep(pace)
        started = time.perf_counter()
        tracker.log_rows([dict(row, epoch=epoch)])
        in_thread += time.perf_counter() - started
    if kind == "tensorboard":
        tracker.writer.flush()
    else:
        for operation in tracker.pending:
            operation.wait()
    cpu = process_cpu() - cpu
    tracker.finish({"status": "completed", "epochs": rows}, None)
    return 1000 * in_thread / rows, 1000 * cpu / rows


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=6)
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--out", default="runs/bench_tracking")
        parser.add_argument("--rows", type=int, default=200, help="rows logged in the direct measurement")
        parser.add_argument("--pace", type=float, default=0.046, help="seconds between rows there (an epoch)")
        parser.add_argument("--direct-only", action="store_true", help="only the direct measurement")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    print(f"{machine(resolve_device(args.device))}; {args.epochs} epochs per run on MNIST, 8 x as many on the digits "
          "(the first left out), "
          f"{args.repeats} runs per setting, in turns")
    workloads = {} if args.direct_only else WORKLOADS
    if workloads:
        print(f"{'workload':<16}{'tracking':<13}{'s/epoch':>9}{'ratio':>8}")
    for name, workload in workloads.items():
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
    print(f"\nthe trackers' own cost: {args.rows} rows, one every {args.pace} s")
    print(f"{'tracker':<13}{'thread ms/row':>15}{'CPU ms/row':>12}{'CPU / epoch':>13}")
    for kind in KINDS[1:]:
        thread, cpu = tracker_cost(kind, args.rows, args.pace, Path(args.out) / f"direct-{kind}")
        print(f"{kind:<13}{thread:>15.3f}{cpu:>12.3f}{cpu / 1000 / args.pace:>13.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
