"""M2's training step on the CPU with denormal floats flushed to zero against computed, in
the same process (``pyro_vae.devices.denormals_flushed``, which ``Trainer.fit`` and
``pyro-vae`` enter).

A trained Bernoulli decoder is confident about MNIST's background: its logits there fall
below -87, so sigmoid(logit), the gradient of log p(x|z), is a denormal float (below 2^-126),
and x86 computes every product that reads one through slow microcode assists. The script
builds the shipped ``m2_mnist`` (Kingma et al.'s sizes; batches of 100 with the 100 labelled
images in every step, ``trace_enum``) on random binary images whose border pixels are always
0, as MNIST's are, and sets the decoder's output bias on those pixels to ``--background``
(-100: as confident as the row-5 run after 84 epochs, whose background logits reach -123;
0: a decoder at its start). Flushed and computed alternate in rounds of ``--steps`` steps on
one thread (the flags are per thread); the ratio is the median over rounds of
flushed / computed.

    python benchmarks/denormals.py [--background -100] [--dead 0.02] [--rounds 6] [--steps 20]
    python benchmarks/denormals.py --weights RUN   # a trained m2_mnist run, on its own data
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.devices import flushes_denormals
from pyro_vae.infer.train import Trainer
from pyro_vae.runs import read_spec
from pyro_vae.spec import load_spec
from pyro_vae.workflows.train import prepare_training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from m2_step import alternate, medians  # noqa: E402

BORDER = 4  # MNIST's outer 4 pixels are 0 in (almost) every image


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--background", type=float, default=-100.0, help="the decoder's logit on the border pixels")
    parser.add_argument("--dead", type=float, default=0.02,
                        help="the share of each network's hidden units given a bias of --background (softplus: a denormal output)")
    parser.add_argument("--weights", metavar="RUN", help="a trained m2_mnist run's weights and data instead of the "
                        "set biases and random images (e.g. the run of accuracy_by_epoch.py --row 5)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train", type=int, default=5000, help="random training images")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    border = np.ones((28, 28), bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    overrides = ["inference.schedule.batch_size=100", "data.labelled=100", f"inference.schedule.epochs={2 * args.rounds + 2}"]
    with tempfile.TemporaryDirectory() as folder:
        if args.weights:  # on the run's own data (its prepared MNIST, binarized at every step)
            path, overrides = read_spec(Path(args.weights)).data.path, [*overrides, "data.binarize=dynamic"]
        else:
            rng = np.random.default_rng(0)
            images = (rng.random((args.train, 28, 28)) < 0.2).astype(np.float32)
            images[:, border] = 0
            path = Path(folder) / "digits.npz"
            np.savez(path, train=images.reshape(args.train, 784), train_labels=rng.integers(0, 10, args.train))
        spec = load_spec(model="m2_mnist", inference="trace_enum", data=str(path), overrides=overrides)
        vae, data = prepare_training(spec)
    if args.weights:
        checkpoint = torch.load(Path(args.weights) / "checkpoint.pt", map_location="cpu", weights_only=True)
        vae.load_state_dict(checkpoint["weights"])
    trainer = Trainer(vae, data, spec.inference, progress=False)
    output = vae.decoder.net[-1]  # the last linear map gives the logits
    hidden = [net.net[0] for net in (vae.encoder, vae.decoder, vae.classifier)]

    @torch.no_grad()
    def reset() -> None:  # the optimizer moved the weights: as confident and as dead again
        if args.weights:
            vae.load_state_dict(checkpoint["weights"])
            return
        output.bias[torch.from_numpy(border.reshape(-1))] = args.background
        for layer in hidden:
            layer.bias[: int(args.dead * len(layer.bias))] = args.background

    def variant(flushed: bool):
        return lambda: (reset(), torch.set_flush_denormal(flushed))

    before = flushes_denormals()
    try:
        seconds = alternate(trainer, {"flushed": variant(True), "computed": variant(False)}, args.rounds, args.steps)
    finally:
        torch.set_flush_denormal(before)
    result = medians(seconds, "flushed", "computed")
    setting = (f"the weights of {args.weights}" if args.weights
               else f"background logit {args.background:g}, {args.dead:g} of the hidden units dead")
    print(f"ms a step (median of {args.rounds} rounds of {args.steps}), {platform.machine()} CPU, 1 thread, "
          f"{setting}: flushed {result['flushed']}, computed {result['computed']}; "
          f"flushed / computed {result['ratio']}")
    return result


if __name__ == "__main__":
    main()
