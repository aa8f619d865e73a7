"""Training throughput streamed from disk against held in memory, in one run.

The textbook network (784-400-50-400-784, softplus, Bernoulli, Adam 1e-3; see
train_throughput.py) on statically binarized MNIST written to a local ``.npy``
(50,000 x 784 float32, 157 MB). Two trainers over the same file: ``data.in_memory =
true`` (one float32 tensor) and ``false`` (each batch gathered from a memory map by the background
prefetcher from the page cache or disk). Epochs alternate, so drifts in machine speed
hit both; the figures are the median epoch time of each and the ratio streamed /
in-memory. (That both train to the same numbers is tested in tests/test_formats.py; here the
two trainers share torch's global generator, so their latent draws interleave.)

    python benchmarks/streaming_throughput.py [--batch-sizes 128 256] [--epochs 4] [--cold]

``--cold`` drops the file from the page cache before each streamed epoch
(``posix_fadvise(DONTNEED)``): reads then come from the disk itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyro_vae.infer.train import Trainer

from pyro_vae.workflows.train import prepare_training
from pyro_vae.spec import Spec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binarized_mnist.npz"


def spec(path: Path, batch_size: int, in_memory: bool) -> Spec:
    mlp = {"kind": "mlp", "hidden": [400], "activation": "softplus"}
    return Spec.from_dict({
        "model": {"latent_dim": 50, "encoder": mlp, "decoder": mlp},
        "inference": {"schedule": {"batch_size": batch_size, "device": "cpu", "epochs": 1000}},
        "data": {"path": str(path), "in_memory": in_memory, "test_fraction": 0.0, "valid_fraction": 0.01},
    })


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per side (after one warm-up epoch each)")
    parser.add_argument("--cold", action="store_true", help="drop the file from the page cache before each streamed epoch")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"shared data absent: {DATA}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mnist.npy"
        with np.load(DATA) as archive:
            np.save(path, archive["train"].astype(np.float32))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
        print(f"{'batch':>6}{'in memory s/epoch':>20}{'streamed s/epoch':>18}{'ratio':>8}")
        for batch in args.batch_sizes:
            trainers = {}
            for in_memory in (True, False):
                s = spec(path, batch, in_memory)
                vae, data = prepare_training(s)
                vae.name = "memory" if in_memory else "streamed"  # two VAEs in Pyro's one param store
                trainers[in_memory] = Trainer(vae, data, s.inference, progress=False)
            times = {True: [], False: []}
            for epoch in range(args.epochs + 1):
                for in_memory, trainer in trainers.items():
                    if args.cold and not in_memory:
                        drop_cache(path)
                    trainer.state.step_in_epoch = 0
                    started = time.perf_counter()
                    trainer.run_epoch()
                    if epoch:  # the first is a warm-up
                        times[in_memory].append(time.perf_counter() - started)
            memory, streamed = statistics.median(times[True]), statistics.median(times[False])

            print(f"{batch:>6}{memory:>20.2f}{streamed:>18.2f}{streamed / memory:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
