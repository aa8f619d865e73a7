"""The VampPrior paper's protocol on statically binarized MNIST (Tomczak & Welling, 2018),
with a plain-PyTorch reference trained in the same run at the same budget.

The setting: encoder and decoder gated MLPs (Dauphin et al., 2017) with two hidden
layers of 300 units, latent dimension 40, Bernoulli likelihood, Adam with learning rate
5e-4, batches of 100, a linear KL warm-up over 100 epochs, early stopping on the
validation ELBO with patience 50 (counted after the warm-up) and at most 2000 epochs;
then log p(x) by importance sampling with 5000 samples. ``--epochs`` caps the budget
(the paper's runs take up to 2000 epochs); when the cap cuts the warm-up short, the
warm-up still ramps over 100 epochs, as it would in the full run.

Variants (``--variants``): ``standard`` (N(0, I) prior), ``vamp`` (VampPrior with 500
pseudo-inputs), ``vamp_iaf`` (the VampPrior with a 2-step IAF posterior), and the paper's
two-layer HVAE (z2 of 40 above z1 of 40, the top-down guide q(z2|x) q(z1|x, z2), the
decoder reading both, gated 300-300 networks everywhere): ``hvae`` (p(z2) = N(0, I)) and
``hvae_vamp`` (the VampPrior on z2). Each is a
``pyro-vae train`` run directory under ``--out``, evaluated with ``evaluate_run`` on
``--limit`` validation images (the same seeded subset for every variant and for the
reference, whose per-image values go to ``plain_valid.npz`` for paired differences). Every
side trains on all 50,000 training images. ``plain`` is the standard variant written in
plain PyTorch (below), trained with the same budget, warm-up and early stopping and
evaluated the same way: the same-run baseline for what the library reaches.

The published figures are test log-likelihoods after full training: standard -88.56,
VampPrior -85.57 nats. The shared data have no binarized test split, so this reports
validation figures.

    python benchmarks/paper_protocol.py [--epochs 100] [--variants standard,vamp] [--samples 5000] [--limit 2000] [--seed 0] [--out runs/paper]
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.devices import resolve_device
from pyro_vae.spec import load_spec
from pyro_vae.workflows.evaluate import evaluate_run
from pyro_vae.workflows.train import train
from train_throughput import DATA, machine, parse_arguments

WARMUP, PATIENCE, MAX_EPOCHS, BATCH, LR = 100, 50, 2000, 100, 5e-4
VAMP = ["model.prior.kind=vamp", "model.prior.components=500"]
GATED = '{kind="gated_mlp", hidden=[300,300]}'
TWO_LAYERS = [  # the paper's HVAE: z2 (40) above z1 (40), q(z2|x) q(z1|x, z2), p(x|z1, z2)
    f"model.upper_layers=[{{latent_dim=40, encoder={GATED}, prior_network={GATED}}}]",
    "model.inference_network=top_down", "model.decoder_reads=all",
]
VARIANTS = {  # name: spec overrides
    "standard": ["model.prior.kind=standard_normal", "model.posterior.kind=diagonal_normal"],
    "vamp": [*VAMP, "model.posterior.kind=diagonal_normal"],
    "vamp_iaf": [*VAMP, "model.posterior.kind=iaf", "model.posterior.steps=2"],
    "hvae": ["model.prior.kind=standard_normal", "model.posterior.kind=diagonal_normal", *TWO_LAYERS],
    "hvae_vamp": [*VAMP, "model.posterior.kind=diagonal_normal", *TWO_LAYERS],
}
PUBLISHED = {"standard": -88.56, "vamp": -85.57, "hvae_vamp": -83.19}  # test log p(x), Tomczak & Welling (2018), Table 2


def variant_spec(name: str, epochs: int, device: str, seed: int = 0, warmup: int = WARMUP):
    return load_spec(model="vampprior", data=str(DATA), overrides=[
        *VARIANTS[name], "model.latent_dim=40", "model.likelihood.kind=bernoulli",
        "model.encoder.kind=gated_mlp", "model.encoder.hidden=[300,300]",
        "model.decoder.kind=gated_mlp", "model.decoder.hidden=[300,300]", f"inference.optimizer.lr={LR}",
        f"inference.schedule.batch_size={BATCH}", f"inference.schedule.kl_warmup_epochs={warmup}",
        f"inference.schedule.patience={PATIENCE}", f"inference.schedule.epochs={min(epochs, MAX_EPOCHS)}",
        f"inference.schedule.device={device}", f"inference.schedule.seed={seed}",
        # all 50,000 training images, as the paper and the plain reference train on (the
        # library's default holds 10% of them out as a test split when a file has none)
        "data.test_fraction=0",
    ])


# --- the plain-PyTorch reference -----------------------------------------------------------


class Gated(nn.Module):
    """h * sigmoid(g), both linear in x: the library's GatedLinear."""

    def __init__(self, width_in, width_out):
        super().__init__()
        self.linear = nn.Linear(width_in, 2 * width_out)

    def forward(self, x):
        h, g = self.linear(x).chunk(2, -1)
        return h * torch.sigmoid(g)


class PlainVAE(nn.Module):
    def __init__(self, features=784, hidden=300, latent=40):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(Gated(features, hidden), Gated(hidden, hidden), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(Gated(latent, hidden), Gated(hidden, hidden), nn.Linear(hidden, features))

    def terms(self, x, samples=None):
        """log p(x|z), log p(z), log q(z|x) at draws z ~ q(z|x): (B,), or (S, B) with ``samples``."""
        h = self.encoder(x)
        loc, scale = h[..., : self.latent], F.softplus(h[..., self.latent :]) + 1e-4
        eps = torch.randn(loc.shape if samples is None else (samples, *loc.shape))
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * (eps.square() + math.log(2 * math.pi)) - scale.log()).sum(-1)
        return log_px_z, log_pz, log_qz

    def elbo(self, x, beta=1.0):
        log_px_z, log_pz, log_qz = self.terms(x)
        return log_px_z + beta * (log_pz - log_qz)

    @torch.no_grad()
    def log_likelihood(self, x, samples, chunk=250):
        """log (1/S) sum_s p(x, z_s) / q(z_s|x), per example, in chunks of draws."""
        parts = []
        for start in range(0, samples, chunk):
            log_px_z, log_pz, log_qz = self.terms(x, min(chunk, samples - start))
            parts.append(log_px_z + log_pz - log_qz)
        return torch.logsumexp(torch.cat(parts), 0) - math.log(samples)


def train_plain(train_x, valid_x, epochs, seed=0, warmup=WARMUP) -> tuple[PlainVAE, dict]:
    torch.manual_seed(seed)
    model = PlainVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    n, steps = len(train_x), len(train_x) // BATCH
    best, best_epoch, bad, best_state, started, step = -math.inf, 0, 0, None, time.perf_counter(), 0
    for epoch in range(1, min(epochs, MAX_EPOCHS) + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        for i in range(steps):
            beta = min(1.0, (step + 1) / (warmup * steps))
            loss = -model.elbo(train_x[order[i * BATCH : (i + 1) * BATCH]], beta).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        with torch.no_grad():
            val = torch.cat([model.elbo(valid_x[i : i + 1000]) for i in range(0, len(valid_x), 1000)]).mean().item()
        if val > best:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch > warmup:
            bad += 1
            if bad >= PATIENCE:
                break
    model.load_state_dict(best_state)
    return model, {"epochs": epoch, "best_epoch": best_epoch, "val_elbo": best,
                   "train_seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--epochs", type=int, default=100, help="budget cap: at most this many epochs per variant")
        parser.add_argument("--variants", default="standard,vamp", help="comma-separated, of: " + ", ".join(VARIANTS))
        parser.add_argument("--samples", type=int, default=5000, help="importance samples per image")
        parser.add_argument("--limit", type=int, default=2000, help="validation images evaluated (the same for all)")
        parser.add_argument("--no-plain", action="store_true", help="skip the plain-PyTorch reference")
        parser.add_argument("--out", default="runs/paper")
        parser.add_argument("--seed", type=int, default=0, help="the seed of every variant's and the reference's training")
        parser.add_argument("--warmup", type=int, default=WARMUP, help="epochs of the linear KL warm-up (the paper's: 100)")

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not chosen or any(v not in VARIANTS for v in chosen):
        print(f"--variants: give one or more of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rows = []
    for name in chosen:
        started = time.perf_counter()
        trainer = train(variant_spec(name, args.epochs, args.device, args.seed, args.warmup), out / name, force=True, progress=False,
                        log=lambda _: None)
        state = trainer.state
        evaluation = evaluate_run(out / name, num_samples=args.samples, limit=args.limit, device=args.device)
        summary, npz = evaluation.summary, evaluation.npz_path
        rows.append({"variant": name, "epochs": state.epoch, "best_epoch": state.best_epoch, "val_elbo": state.best_val,
                     "log_likelihood": summary["log_likelihood"], "se": summary["log_likelihood_se"],
                     "seconds_per_epoch": state.train_seconds / max(state.epoch, 1),
                     "wall_seconds": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_plain:
        arrays = np.load(DATA)
        train_x = torch.as_tensor(arrays["train"], dtype=torch.float32)
        valid_x = torch.as_tensor(arrays["valid"], dtype=torch.float32)
        index = np.load(npz)["index"]  # the validation images the library's runs were evaluated on
        model, fit = train_plain(train_x, valid_x, args.epochs, args.seed, args.warmup)
        model.eval()
        torch.manual_seed(0)
        log_px = torch.cat([model.log_likelihood(x, args.samples) for x in valid_x[index].split(100)])
        np.savez(out / "plain_valid.npz", log_likelihood=log_px.detach().cpu().numpy(), index=index)  # per image, for paired differences
        rows.append({"variant": "plain (standard)", "epochs": fit["epochs"], "best_epoch": fit["best_epoch"],
                     "val_elbo": fit["val_elbo"], "log_likelihood": log_px.mean().item(),
                     "se": log_px.std().item() / math.sqrt(len(log_px)),
                     "seconds_per_epoch": fit["train_seconds"] / fit["epochs"], "wall_seconds": fit["train_seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"epochs": args.epochs, "samples": args.samples, "limit": args.limit,
                                                  "machine": machine(resolve_device(args.device)), "rows": rows}, indent=2))
    print(f"\nbudget {args.epochs} epochs on {machine(resolve_device(args.device))}; log p(x) with K = {args.samples} "
          f"on {args.limit} validation images (+- SE over images)\n")
    print("| variant | epochs | best epoch | val ELBO | log p(x) | published (test) | s/epoch |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        published = PUBLISHED.get(r["variant"].replace("plain (standard)", "standard"))
        print(f"| {r['variant']} | {r['epochs']} | {r['best_epoch']} | {r['val_elbo']:.2f} | {r['log_likelihood']:.2f} +- {r['se']:.2f} | "
              f"{'' if published is None else published} | {r['seconds_per_epoch']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
