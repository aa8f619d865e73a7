"""Data-parallel training throughput: one process against two (torchrun), in one run.

The textbook network (784-400-50-400-784, softplus, Bernoulli, Trace_ELBO, Adam 1e-3) on
statically binarized MNIST at a global batch of 256, trained by ``pyro-vae train`` in one
process and by ``torchrun --standalone --nproc_per_node 2 -m pyro_vae train``, alternating,
``--repeats`` times each. On the CPU every rank has one thread (OMP_NUM_THREADS=1), the
one-process run too, so W = 2 uses the two cores that W = 1 leaves half idle. Throughput
is training examples per second from ``metrics.csv`` (validation excluded), the median
over the epochs after the first of each run; scaling efficiency = speed-up / W.

    python benchmarks/distributed_throughput.py [--epochs 4] [--repeats 2] [--batch-size 256] [--device cpu|cuda]

With ``--device cuda`` each rank takes its own GPU (W = 2 needs two).
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from train_throughput import parse_arguments, textbook_spec


def throughput(run: Path) -> float:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["examples_per_second"]) for r in rows[1:] or rows)


def train(world: int, spec_file: Path, out: Path, epochs: int) -> float:
    command = ["-m", "pyro_vae", "train", "--spec", str(spec_file), "--out", str(out), "--force", "--quiet",
               "--set", f"inference.schedule.epochs={epochs}"]
    if world > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *command], check=True, env=env, timeout=3600)
    return throughput(out)


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
        parser.add_argument("--repeats", type=int, default=2, help="runs of each world size, alternating")
        parser.add_argument("--batch-size", type=int, default=256, help="the global batch")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    worlds = [1, 2] if device == "cpu" or torch.cuda.device_count() >= 2 else [1]
    with tempfile.TemporaryDirectory() as folder:
        spec_file = Path(folder) / "spec.toml"
        spec_file.write_text(textbook_spec(args.batch_size, device).to_toml())
        speeds: dict[int, list[float]] = {w: [] for w in worlds}
        for repeat in range(args.repeats):
            for world in worlds:
                speeds[world].append(train(world, spec_file, Path(folder) / f"w{world}", args.epochs))
                print(f"repeat {repeat + 1}: W = {world}: {speeds[world][-1]:,.0f} examples/s", flush=True)
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"{os.cpu_count()}-core CPU, 1 thread per rank"
    print(f"\ntextbook network, global batch {args.batch_size}, {where}, torch {torch.__version__}")
    base = statistics.median(speeds[1])
    for world in worlds:
        speed = statistics.median(speeds[world])
        print(f"W = {world}: {speed:>9,.0f} examples/s (runs: {', '.join(f'{s:,.0f}' for s in speeds[world])}); "
              f"speed-up {speed / base:.2f}x, efficiency {speed / base / world:.0%}")
    if len(worlds) == 1:
        print("W = 2 needs two GPUs: only one is visible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
