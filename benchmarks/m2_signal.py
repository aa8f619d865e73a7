"""The learning signal of M2's unlabelled y under the score function (issue 28).

Semi-supervised M2 trained with ``trace_elbo`` samples y on the unlabelled examples and
takes the score-function gradient of q(y|x). Traced in one model and guide, the labelled
plate (a sibling of the data plate) adds its whole sum to every unlabelled y's learning
signal (Pyro's Trace_ELBO Rao-Blackwellizes over the plates a site is in, and sums the
others); traced apart (``VAE.objective_parts``, what the trainer does), each signal is the
example's own log-weight. This measures the variance of the classifier's gradient both ways
on one fixed batch, at the initial weights and after training, for the shipped
``m2_semisupervised`` on the digits with 100 labels.

    python benchmarks/m2_signal.py [--epochs 20] [--repeats 200]
"""

from __future__ import annotations

import argparse

import torch

from pyro_vae.infer.estimators import ESTIMATORS, PartwiseLoss
from pyro_vae.infer.gradients import fixed_batch
from pyro_vae.spec import load_spec
from pyro_vae.workflows.train import check, train


def classifier_variance(vae, loss, x, index, repeats: int) -> float:
    """The mean over the classifier's parameters of the gradient's variance over repeats."""
    grads = []
    for _ in range(repeats):
        for p in vae.parameters():
            p.grad = None
        loss.loss_and_grads(vae.model, vae.guide, x, index)
        grads.append(torch.cat([p.grad.flatten() for p in vae.classifier.parameters()]).double())
    return torch.stack(grads).var(0).mean().item()


def measure(vae, data, estimator, repeats: int, seed: int = 0) -> tuple[float, float]:
    x, index = fixed_batch(data, 100)
    torch.manual_seed(seed)
    joint = classifier_variance(vae, estimator, x, index, repeats)
    torch.manual_seed(seed)
    apart = classifier_variance(vae, PartwiseLoss(estimator, vae.objective_parts), x, index, repeats)
    return joint, apart


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    overrides = ["data.labelled=100", "inference.estimator.kind=trace_elbo", f"inference.schedule.epochs={args.epochs}"]
    spec = load_spec(model="m2_semisupervised", overrides=overrides)
    vae, data = check(spec)
    estimator = ESTIMATORS.build(spec.inference.estimator)
    vae.use_estimator(estimator, "trace_elbo")
    print(f"{'weights':>22} {'joint':>12} {'apart':>12} {'ratio':>7}   (variance of the classifier's gradient)")
    joint, apart = measure(vae, data, estimator, args.repeats)
    print(f"{'initial':>22} {joint:>12.4g} {apart:>12.4g} {joint / apart:>7.1f}")
    trainer = train(spec, progress=False, log=lambda message: None)
    joint, apart = measure(trainer.vae, data, trainer.estimator, args.repeats)
    print(f"{f'after {args.epochs} epochs':>22} {joint:>12.4g} {apart:>12.4g} {joint / apart:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
