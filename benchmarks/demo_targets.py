"""Issue 29's targets for a digits demo, measured for one setting and seed, and the causes of a
high Pareto k-hat (the figures of docs/guides/first-run.md).

Trains ``pyro-vae train --model MODEL --set ...`` on the digits and reports, on the
validation split: the share of digits with PSIS k-hat >= 0.7 and the importance-sampled
log p(x), from S draws of q(z|x) (``--draws``, as ``analyze``'s ``--samples``); the share of
mean reconstructions a logistic-regression classifier trained on the digits reads correctly;
the share of 100 prior samples (``torch.manual_seed(0)``) it assigns to some class with
probability >= 0.8; the active units. With ``--refine N`` also the same k-hat and log p(x)
with the semi-amortized proposal of ``evaluate --refine N`` (``pyro_vae.infer.refine``: each
digit's Gaussian q refined by N Adam steps on its own ELBO, the model fixed).

    python benchmarks/demo_targets.py --out /tmp/demo --seed 0 [--model beta_binomial] \\
        [--inference dreg_k5] [--set model.latent_dim=8 ...] [--draws 100,1000,5000] [--refine 1000] [--measure-only]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from pyro_vae.analysis.inference_data import posterior_draws
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.infer.metrics import active_units
from pyro_vae.runs import load_run


def khat_figures(posterior) -> dict:
    """Share with k-hat >= 0.7, median k-hat and plain IS log p(x) of :func:`posterior_draws`."""
    return {"unreliable": float((posterior.pareto_k >= 0.7).mean()), "median_khat": float(np.median(posterior.pareto_k)),
            "log_px": float(posterior.is_log_likelihood.mean())}


def measure(out: str, seed: int, draws: list[int], refine: int) -> dict:
    run = load_run(out)
    run.vae.eval()
    data = load_data(run.spec.data, seed, likelihood=run.vae.likelihood, preprocessing=run.preprocessing)
    classifier = LogisticRegression(max_iter=2000).fit(data.split("train").numpy(), data.labels["train"].numpy())
    valid = data.split("valid")
    with torch.no_grad():
        q = run.vae.q(valid)
        reconstructions = run.vae.decode_mean(q.mean, valid)
        torch.manual_seed(0)
        samples = run.vae.sample(100)[1]
    figures = {"seed": seed, "reconstructions_read": classifier.score(reconstructions.numpy(), data.labels["valid"].numpy()),
               "samples_confident": float((classifier.predict_proba(samples.numpy()).max(1) >= 0.8).mean()),
               "active_units": int(active_units(q.mean)), "latent_dim": run.vae.latent_dim}
    for count in draws:
        torch.manual_seed(0)
        posterior = posterior_draws(run.vae, valid, count, keep_draws=1)
        figures[f"S={count}"] = khat_figures(posterior)
    if refine:  # the semi-amortized proposal, as evaluate --refine and analyze --refine take it
        torch.manual_seed(0)
        posterior = posterior_draws(run.vae, valid, draws[-1], keep_draws=draws[-1], refine=refine)
        figures[f"refined {refine} steps, S={draws[-1]}"] = {**khat_figures(posterior),
                                                               "elbo": float(posterior.log_weight.mean())}
    return figures


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="binomial")
    parser.add_argument("--inference", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--draws", default="1000", help="comma-separated S")
    parser.add_argument("--refine", type=int, default=0)
    parser.add_argument("--measure-only", action="store_true", help="measure the run already in --out, untrained")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_arguments()
    command = ["train", "--out", args.out, "--quiet", "--force", "--model", args.model,
               "--set", f"inference.schedule.seed={args.seed}"]
    command += ["--inference", args.inference] if args.inference else []
    for override in args.overrides:
        command += ["--set", override]
    assert args.measure_only or main(command) == 0
    print(json.dumps(measure(args.out, args.seed, [int(s) for s in args.draws.split(",")], args.refine), indent=1))
