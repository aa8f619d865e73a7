"""Issue 29's targets for a digits demo, measured for one setting and seed, and the causes of a
high Pareto k-hat (the figures of docs/guides/first-run.md).

Trains ``pyro-vae train --model MODEL --set ...`` on the digits and reports, on the
validation split: the share of digits with PSIS k-hat >= 0.7 and the importance-sampled
log p(x), from S draws of q(z|x) (``--draws``, as ``analyze``'s ``--samples``); the share of
mean reconstructions a logistic-regression classifier trained on the digits reads correctly;
the share of 100 prior samples (``torch.manual_seed(0)``) it assigns to some class with
probability >= 0.8; the active units. With ``--refine N`` also the same k-hat after N Adam
steps (lr 0.01, 16 draws) on each digit's own ELBO of a Gaussian q started at the encoder's,
the decoder fixed: what is left once the encoder's amortization gap is closed.

    python benchmarks/demo_targets.py --out /tmp/demo --seed 0 [--model beta_binomial] \\
        [--inference dreg_k5] [--set model.latent_dim=8 ...] [--draws 100,1000,5000] [--refine 1000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.distributions as D
from sklearn.linear_model import LogisticRegression

from pyro_vae.analysis.inference_data import posterior_draws, psis
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.infer.evaluate import active_units
from pyro_vae.runs import load_run


def khat_figures(log_weights: torch.Tensor) -> dict:
    """Share with k-hat >= 0.7, median k-hat and plain IS log p(x), from (S, n) log weights."""
    khat, _, is_ll = psis(log_weights.double().numpy().T)
    return {"unreliable": float((khat >= 0.7).mean()), "median_khat": float(np.median(khat)),
            "log_px": float(is_ll.mean())}


def refined(run, x: torch.Tensor, steps: int, draws: int) -> dict:
    """k-hat of a per-example Gaussian q refined by ``steps`` Adam steps on its ELBO."""
    for parameter in run.vae.parameters():
        parameter.requires_grad_(False)
    prior = run.vae.latent_prior()
    with torch.no_grad():
        q = run.vae.q(x)
    loc, log_scale = q.mean.clone().requires_grad_(), q.stddev.log().clone().requires_grad_()
    optimizer = torch.optim.Adam([loc, log_scale], lr=1e-2)

    def log_weights(count: int, grad: bool) -> torch.Tensor:
        q = D.Independent(D.Normal(loc, log_scale.exp()), 1)
        z = q.rsample((count,)) if grad else q.sample((count,))
        return run.vae.p_x(z, x).log_prob(x) + prior.log_prob(z) - q.log_prob(z)

    for _ in range(steps):
        loss = -log_weights(16, True).mean(0).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    with torch.no_grad():
        weights = log_weights(draws, False)
    return {**khat_figures(weights), "elbo": float(weights.mean())}


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
        figures[f"S={count}"] = {"unreliable": float((posterior.pareto_k >= 0.7).mean()),
                                 "median_khat": float(np.median(posterior.pareto_k)),
                                 "log_px": float(posterior.is_log_likelihood.mean())}
    if refine:
        figures[f"refined {refine} steps, S={draws[-1]}"] = refined(run, valid, refine, draws[-1])
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_arguments()
    command = ["train", "--out", args.out, "--quiet", "--force", "--model", args.model,
               "--set", f"inference.schedule.seed={args.seed}"]
    command += ["--inference", args.inference] if args.inference else []
    for override in args.overrides:
        command += ["--set", override]
    assert main(command) == 0
    print(json.dumps(measure(args.out, args.seed, [int(s) for s in args.draws.split(",")], args.refine), indent=1))
