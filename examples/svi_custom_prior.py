"""Build a VAE from a spec, plug in a prior of your own, and train it with pyro.infer.SVI.

    python examples/svi_custom_prior.py [--epochs 30]

The library builds the model p(z) p(x|z) and the guide q(z|x) from a declarative spec;
everything after that is plain Pyro: ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``.
The prior here is a class written in this file and chosen by its import path, the way
any of your own components (prior, likelihood, posterior, network, estimator) plug in.
"""

from __future__ import annotations

import argparse
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae import build_vae, load_spec
from pyro_vae.data import check_support, load_data
from pyro_vae.infer.evaluate import importance_sample
from pyro_vae.model import Prior


class LogisticPrior(Prior):
    """A factorized logistic prior with a learned scale per latent dimension.

    Its spec parameters are the keyword-only arguments of __init__: here
    ``[model.prior] kind = "__main__:LogisticPrior", initial_scale = 1.0``.
    """

    def __init__(self, latent_dim: int, *, initial_scale: float = 1.0):
        super().__init__(latent_dim)
        self.log_scale = nn.Parameter(torch.full((latent_dim,), math.log(initial_scale)))

    def forward(self):
        base = dist.Uniform(torch.zeros_like(self.log_scale), torch.ones_like(self.log_scale))
        # logistic(0, s) = s * logit(u), u ~ Uniform(0, 1)
        transforms = [dist.transforms.SigmoidTransform().inv, dist.transforms.AffineTransform(0.0, self.log_scale.exp())]
        return dist.TransformedDistribution(base, transforms).to_event(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)

    # 1. a spec: a shipped model with one slot swapped, on the embedded digits
    spec = load_spec(
        model="bernoulli_mlp",
        data="digits",
        overrides=["model.prior.kind=__main__:LogisticPrior", "model.prior.initial_scale=1.0", "model.latent_dim=8"],
    )
    pyro.set_rng_seed(0)
    data = load_data(spec.data, seed=0)
    train, valid = data.splits["train"], data.splits["valid"]

    # 2. the VAE: vae.model and vae.guide are Pyro functions
    vae = build_vae(spec.model, data.data_shape, num_data=len(train))
    check_support(data, vae.likelihood)

    # 3. plain Pyro from here on
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    batch = 64
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(train))
        total = 0.0
        for start in range(0, len(train) - batch + 1, batch):
            index = order[start : start + batch]
            total += svi.step(train[index], index)
        if epoch % 10 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}  ELBO {-total / (len(train) // batch) / len(train):.3f} nats/example")

    with torch.no_grad():
        vae.eval()
        result = importance_sample(vae, valid, num_samples=500)
    print(f"validation log p(x) ~ {result.log_likelihood.mean():.3f} nats/example (500 importance samples)")
    print(f"learned prior scales: {vae.prior.log_scale.exp().detach().numpy().round(2)}")


if __name__ == "__main__":
    main()
