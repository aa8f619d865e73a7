"""Importance-sampled evaluation: the library against a plain-PyTorch sampler, in one run.

log p(x) ~ log 1/K sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), with K = 5000 as in the
literature, for the textbook network (784-400-50-400-784, softplus, Bernoulli) on
statically binarized MNIST validation images. The library side is
``pyro_vae.infer.evaluate.importance_sample`` (chunked to a fixed memory budget, and also
accumulating the ELBO, KL and posterior means); the reference below computes only the
log-likelihood, in chunks of the same size. The two alternate; the figure is the median
time of each and the ratio library / plain.

    python benchmarks/evaluate_throughput.py [--examples 1000] [--samples 5000] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from pyro_vae.infer.evaluate import BUDGET, chunk_plan, importance_sample
from pyro_vae.devices import resolve_device
from pyro_vae.model import build_vae
from train_throughput import DATA, machine, parse_arguments, textbook_spec


@torch.no_grad()
def plain_log_likelihood(encoder, decoder, x, num_samples, examples_per_chunk, samples_per_chunk, latent=50):
    out = torch.empty(len(x), device=x.device)
    for start in range(0, len(x), examples_per_chunk):
        xb = x[start : start + examples_per_chunk]
        h = encoder(xb)
        loc, scale = h[:, :latent], F.softplus(h[:, latent:]) + 1e-4
        lse = torch.full((len(xb),), -math.inf, device=x.device)
        for drawn in range(0, num_samples, samples_per_chunk):
            s = min(samples_per_chunk, num_samples - drawn)
            eps = torch.randn(s, *loc.shape, device=x.device)
            z = loc + scale * eps
            log_px_z = -F.binary_cross_entropy_with_logits(decoder(z), xb.expand(s, -1, -1), reduction="none").sum(-1)
            log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * (eps.square() + math.log(2 * math.pi)) - scale.log()).sum(-1)
            lse = torch.logaddexp(lse, torch.logsumexp(log_px_z + log_pz - log_qz, 0))
        out[start : start + len(xb)] = lse - math.log(num_samples)
    return out


def timed(fn, device):
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    def add(parser):
        parser.add_argument("--examples", type=int, default=1000, help="validation images (10000 for the full split)")
        parser.add_argument("--samples", type=int, default=5000)
        parser.add_argument("--repeats", type=int, default=3)

    args = parse_arguments(__doc__, argv, add)
    if args is None:
        return 0
    device = resolve_device(args.device)
    x = torch.as_tensor(np.load(DATA)["valid"][: args.examples], dtype=torch.float32, device=device)
    torch.manual_seed(0)
    vae = build_vae(textbook_spec(128, args.device).model, (784,)).to(device).eval()
    examples, samples = chunk_plan(args.samples, len(x), 784 + 50, BUDGET)
    encoder, decoder = vae.encoder.net, vae.decoder.net  # the same weights, used directly
    library, plain = [], []
    for _ in range(args.repeats):
        t, result = timed(lambda: importance_sample(vae, x, args.samples), device)
        library.append(t)
        t, reference = timed(lambda: plain_log_likelihood(encoder, decoder, x, args.samples, examples, samples), device)
        plain.append(t)
    gap = (result.log_likelihood - reference).abs().max().item()
    lib, ref = statistics.median(library), statistics.median(plain)
    print(f"device: {device} ({machine(device)}), torch {torch.__version__}")
    print(f"{args.examples} examples x K = {args.samples}, chunks of {examples} examples x {samples} samples")
    print(f"library {lib:.2f} s, plain {ref:.2f} s, ratio {lib / ref:.3f}; "
          f"mean log p(x) {result.log_likelihood.mean():.3f} vs {reference.mean():.3f} (max per-example gap {gap:.3f}: Monte Carlo noise of an untrained network; this benchmark compares time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
