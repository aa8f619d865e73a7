"""Prior and posterior families on equal terms: a thin call of ``pyro-vae compare``.

Trains the same networks (784-300-300-40-300-300-784, softplus, Bernoulli, Adam 1e-3,
batches of 128) with a standard normal prior, a mixture-of-Gaussians prior, the VampPrior
and an IAF posterior on the shared statically binarized MNIST, each for the same number
of epochs from the same initial networks and data order per seed, then evaluates each on
the same validation images with the same K. The same as

    pyro-vae compare --model bernoulli_mlp --data ../shared/data/binarized_mnist.npz --zip \\
        --vary model.prior=standard_normal,mixture:components=10,vamp:components=500,standard_normal \\
        --vary model.posterior=diagonal_normal,diagonal_normal,diagonal_normal,iaf:steps=2 \\
        --set model.latent_dim=40 ... --out runs/bench_priors

Published after full training (thousands of epochs, K = 5000, test split): standard
normal about -88.6, VampPrior -85.57 nats (Tomczak & Welling, 2018).

    python benchmarks/priors.py [--epochs 10] [--seeds 1] [--samples 1000] [--limit 2000] [--variants vamp,iaf] [--out runs/bench_priors]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyro_vae.devices import resolve_device
from pyro_vae.workflows.compare import Design, EvaluationSettings, SNRSettings, compare
from train_throughput import DATA, machine, parse_arguments

VARIANTS = {  # name: (prior, posterior)
    "standard_normal": ("standard_normal", "diagonal_normal"),
    "mixture": ("mixture:components=10", "diagonal_normal"),
    "vamp": ("vamp:components=500", "diagonal_normal"),
    "iaf": ("standard_normal", "iaf:steps=2"),
}


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--seeds", type=int, default=1)
        parser.add_argument("--samples", type=int, default=1000, help="importance samples per example")
        parser.add_argument("--limit", type=int, default=2000, help="validation images evaluated (same subset for all)")
        parser.add_argument("--out", default="runs/bench_priors")
        parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or len(chosen) < 2:
        print(f"--variants: give two or more of {', '.join(VARIANTS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
              file=sys.stderr)
        return 2
    compare(
        Design(vary=[f"model.prior={','.join(VARIANTS[v][0] for v in chosen)}",
                     f"model.posterior={','.join(VARIANTS[v][1] for v in chosen)}"], zip_axes=True, seeds=args.seeds),
        model="bernoulli_mlp", inference="trace_elbo", data=str(DATA), force=True,
        overrides=["model.latent_dim=40", "model.encoder.hidden=[300,300]", "model.decoder.hidden=[300,300]",
                   f"inference.schedule.epochs={args.epochs}", f"inference.schedule.device={args.device}"],
        out=args.out, evaluation=EvaluationSettings(samples=args.samples, limit=args.limit), snr=SNRSettings(repeats=20, k=()),
    )
    print(f"\n{args.epochs} epochs, {args.seeds} seed(s) each on {machine(resolve_device(args.device))}; log p(x) with K = {args.samples} "
          f"on {args.limit} validation images; table: {args.out}/comparison.md\n")
    print((Path(args.out) / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
