"""M2's training step with q(z|x, y) reading y through the encoder's split first map against
reading the concatenation [x, y] (the library before 2026-12-07), in the same process.

Under ``trace_enum`` the guide scores q(z|x, y) for all K classes at once: with the
concatenation the encoder's widest product (784 + K inputs by 500) runs on K copies of the
batch; split, W_x x runs once on the batch and W_y y once per class, and the two are
broadcast (``_Stacked.forward(x, beside=y)``; the same weights, the same numbers to float rounding, tested in
``tests/test_categorical.py``). The shipped ``m2_mnist`` (Kingma et al.'s sizes: MLPs of
500, latent 50, 10 classes), batches of 100 with the 100 labelled images in every step, on
random binary images of MNIST's shape (the time does not depend on the pixels). The two
variants alternate in rounds of ``--steps`` steps; the ratio is the median over rounds of
split / concatenated.

    python benchmarks/m2_step.py [--rounds 6] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyro_vae.infer.train import Trainer
from pyro_vae.model import vae as vae_module
from pyro_vae.model.layers import concatenated
from pyro_vae.spec import load_spec
from pyro_vae.workflows.train import prepare_training


def concatenated_encoded(vae, u, y):
    """The encoder reading [x, y], one row per class and example."""
    if y is None or not vae.structure.y.encoder_reads_y:
        return vae.encoder(u)
    return vae.encoder(concatenated(vae._flat(u), y))


def alternate(trainer, setups: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds a step of each variant over ``rounds`` rounds of ``steps`` training steps, the
    variants alternating within each round (``setups[name]()`` puts one in place), after a
    round 0 that warms up."""
    trainer.steps_per_epoch = steps
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(rounds + 1):
        for name, setup in setups.items():
            setup()
            started = time.perf_counter()
            trainer.run_epoch()
            if r:
                seconds[name].append((time.perf_counter() - started) / steps)
            trainer.state.epoch, trainer.state.step_in_epoch = trainer.state.epoch + 1, 0
    return seconds


def medians(seconds: dict[str, list[float]], first: str, second: str) -> dict:
    """Each variant's median milliseconds a step, and the median over rounds of first / second."""
    result = {name: round(statistics.median(v) * 1000, 1) for name, v in seconds.items()}
    result["ratio"] = round(statistics.median(a / b for a, b in zip(seconds[first], seconds[second])), 3)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", type=int, default=5000, help="random training images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digits.npz"
        np.savez(path, train=(rng.random((args.train, 784)) < 0.13).astype(np.float32),
                 train_labels=rng.integers(0, 10, args.train))
        spec = load_spec(model="m2_mnist", inference="trace_enum", data=str(path),
                         overrides=["inference.schedule.batch_size=100", "data.labelled=100",
                                    f"inference.schedule.epochs={2 * args.rounds + 2}"])
        vae, data = prepare_training(spec)
    trainer = Trainer(vae, data, spec.inference, progress=False)
    split = vae_module.VAE._encoded
    variants = {"split": split, "concatenated": concatenated_encoded}
    try:
        seconds = alternate(trainer, {name: (lambda e=encoded: setattr(vae_module.VAE, "_encoded", e))
                                      for name, encoded in variants.items()}, args.rounds, args.steps)
    finally:
        vae_module.VAE._encoded = split
    result = medians(seconds, "split", "concatenated")
    print(f"ms a step (median of {args.rounds} rounds of {args.steps}), {platform.machine()} CPU, {args.threads} "
          f"thread(s): split {result['split']}, concatenated {result['concatenated']}; split / concatenated "
          f"{result['ratio']}")
    return result


if __name__ == "__main__":
    main()
