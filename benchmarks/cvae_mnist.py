"""Class-conditional MNIST: does a CVAE trained with the label as a covariate draw the digit
it is asked for?

A classifier (an MLP 784-256-10, Adam 1e-3, batches of 128, ``--classifier-epochs`` epochs)
is trained on the real MNIST training images (8-bit levels / 255) and checked on the real
test images; then, for each digit k, ``--n`` samples E[x | z, c = k], z ~ p(z | c = k), are
drawn from the run (as ``pyro-vae sample RUN --condition label=k`` draws them) and read by
the classifier. Reports the share read as k, per k (with ``--n`` samples its standard error
is sqrt(p (1 - p) / n): 3.7 points at p = 0.9 and n = 64, 0.9 at n = 1000), what the others
were read as (``confused_as``), and writes a figure of the first 8 samples (one row per
digit).

Train the run first (the shipped spec; dynamic binarization):

    pyro-vae train --model cvae_mnist --data ../shared/data/mnist-idx/train-images-idx3-ubyte.gz \\
        --set 'data.covariates=["label"]' --set data.binarize=dynamic --set inference.schedule.epochs=N --out runs/cvae
    python benchmarks/cvae_mnist.py runs/cvae [--n 1000] [--out runs/cvae/cvae_mnist.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyro_vae.analysis.figures import Look, image_panel
from pyro_vae.runs import load_run

IDX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-idx"


def read_idx(name: str) -> np.ndarray:
    with gzip.open(IDX / name, "rb") as f:
        content = f.read()
    ndim = content[3]
    dims = struct.unpack(f">{ndim}I", content[4 : 4 + 4 * ndim])
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def classifier(epochs: int, seed: int = 0) -> tuple[nn.Module, float]:
    """An MLP trained on the real training images; (model, accuracy on the real test images)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(read_idx("train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255)
    y = torch.from_numpy(read_idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            optimizer.step()
    xt = torch.from_numpy(read_idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255)
    yt = torch.from_numpy(read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    with torch.no_grad():
        accuracy = (net(xt).argmax(-1) == yt).float().mean().item()
    return net.eval(), accuracy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    run = load_run(args.run)
    net, test_accuracy = classifier(args.classifier_epochs, args.seed)
    coding = run.coding
    torch.manual_seed(args.seed)
    per_digit, confused, shown = {}, {}, []
    for k in range(10):
        c = coding.draw(args.n, coding.assignments([f"label={k}"], "label"), args.seed)
        _, images = run.vae.sample(args.n, condition=c)
        with torch.no_grad():
            read = net(images.reshape(args.n, -1)).argmax(-1)
        per_digit[k] = (read == k).float().mean().item()
        counts = torch.bincount(read, minlength=10).tolist()
        confused[k] = {str(j): counts[j] for j in sorted(range(10), key=lambda j: -counts[j]) if j != k and counts[j]}
        shown.append((f"label = {k}: {per_digit[k]:.0%} read as {k}", images[:8]))
    out = Path(args.out or Path(args.run) / "cvae_mnist.json")
    figure = image_panel(out.with_suffix(".png"), shown, Look.of(run.vae),
                         "sample --condition label=k: E[x | z, c = k], z ~ p(z | c = k)")
    result = {"run": str(args.run), "samples_per_digit": args.n, "classifier_test_accuracy": test_accuracy,
              "read_as_asked": per_digit, "confused_as": confused, "lowest": min(per_digit.values()),
              "figure": str(figure),
              "epochs": run.summary.get("epochs"), "best_val_elbo": run.summary.get("best_val_elbo")}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
