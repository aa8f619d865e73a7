"""Discrete latents on labelled MNIST: M2's semi-supervised test accuracy next to a
supervised classifier of the same size trained on the labelled examples alone, and the
Gaussian-mixture VAE's clustering accuracy and NMI next to k-means on the raw pixels.

Data: the official MNIST test files (10,000 labelled 8-bit images in ../shared/data/mnist-idx),
split 8000 / 1000 / 1000 with the seed, statically binarized, Bernoulli likelihood. M2 and
the GMVAE: MLPs 784-500-(latent 50 | 10 clusters) with softplus, trace_enum (y summed
exactly), Adam 1e-3, batches of 100, ``--epochs`` epochs, no early stopping; M2's
alpha is the shipped spec's (15000) unless ``--alpha`` gives another (Kingma et al., 2014, use 0.1 N). The supervised baseline is M2's classifier network
(784-500-10) trained by Adam 1e-3 on the labelled examples alone, full batch, for
``--supervised-steps`` steps. Test accuracy is argmax q(y|x) on the 1000 test images.
Kingma et al. (2014, Table 1) report M2's test accuracy with 50,000 training images:
88.0% with 100 labels, 96.4% with 1000.

    python benchmarks/semisupervised.py [--epochs 50] [--labels 100,1000] [--alpha A] [--skip-m2 | --skip-gmvae]
                                        [--gmvae-set KEY=VALUE ...] [--out runs/bench_semisupervised]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pyro_vae.workflows.evaluate import evaluate_run
from pyro_vae.infer.supervised import supervised_classifier
from pyro_vae.workflows.train import train
from pyro_vae.spec import load_spec

IDX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-idx" / "t10k-images-idx3-ubyte.gz"
NETWORK = ["model.encoder.hidden=[500]", "model.decoder.hidden=[500]", "model.discrete.classifier.hidden=[500]",
           "model.likelihood.kind=bernoulli", "model.latent_dim=50"]


def spec(model: str, epochs: int, seed: int, extra=()):
    return load_spec(model=model, inference="trace_enum", data=str(IDX), overrides=[
        *NETWORK, "data.binarize=static", "data.valid_fraction=0.1", "data.test_fraction=0.1",
        f"inference.schedule.epochs={epochs}", "inference.schedule.batch_size=100", f"inference.schedule.seed={seed}",
        *extra])


def supervised_accuracy(trainer, classifier: dict, steps: int, seed: int) -> float:
    """The test accuracy of the classifier's architecture, fresh, trained on the labelled examples alone."""
    net = supervised_classifier(trainer.vae, classifier, steps, seed=seed)
    test = trainer.data.split("test")
    with torch.no_grad():
        predicted = net(trainer.vae.encoder_input(test)).argmax(-1)
    return (predicted == trainer.data.labels["test"]).double().mean().item()


def kmeans_scores(data, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from pyro_vae.infer.metrics import classification_summary

    train, test = data.split("train").cpu().numpy(), data.split("test").cpu().numpy()
    kmeans = KMeans(10, n_init=10, random_state=seed).fit(train.reshape(len(train), -1))
    assigned = kmeans.predict(test.reshape(len(test), -1))
    summary = classification_summary(torch.nn.functional.one_hot(torch.as_tensor(assigned, dtype=torch.long), 10).float(),
                                     data.labels["test"])
    return {"cluster_accuracy": summary["cluster_accuracy"], "nmi": summary["nmi"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--labels", default="100,1000", help="comma-separated numbers of labelled training examples")
    parser.add_argument("--supervised-steps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=100, help="importance samples per class for test log p(x)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="M2's model.discrete.alpha (default: m2_semisupervised's, 15000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-gmvae", action="store_true")
    parser.add_argument("--skip-m2", action="store_true")
    parser.add_argument("--gmvae-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the GMVAE's spec, e.g. model.discrete.encoder_reads_y=true")
    parser.add_argument("--out", default="runs/bench_semisupervised")
    args = parser.parse_args(argv)
    if not IDX.exists():
        print(f"skipped: {IDX} is absent (the shared MNIST IDX files)", file=sys.stderr)
        return 0
    out = Path(args.out)
    results = {"epochs": args.epochs, "seed": args.seed, "machine": f"{torch.get_num_threads()} threads, cpu", "m2": [],
               "gmvae": None}
    for count in ([] if args.skip_m2 else (int(c) for c in args.labels.split(","))):
        s = spec("m2_semisupervised", args.epochs, args.seed, [f"data.labelled={count}",
                 *([] if args.alpha is None else [f"model.discrete.alpha={args.alpha}"])])
        started = time.perf_counter()
        trainer = train(s, out / f"m2_{count}", force=True, progress=False, log=lambda _: None)
        seconds = time.perf_counter() - started
        summary = evaluate_run(out / f"m2_{count}", split="test", num_samples=args.samples, device="cpu").summary
        row = {"labels": count, "m2_accuracy": summary["accuracy"], "m2_log_likelihood": summary["log_likelihood"],
               "supervised_accuracy": supervised_accuracy(trainer, s.model.discrete.classifier, args.supervised_steps, args.seed),
               "train_seconds": seconds}
        results["m2"].append(row)
        print(json.dumps(row), flush=True)
    if not args.skip_gmvae:
        s = spec("gmvae", args.epochs, args.seed, args.gmvae_set)
        started = time.perf_counter()
        trainer = train(s, out / "gmvae", force=True, progress=False, log=lambda _: None)
        seconds = time.perf_counter() - started
        summary = evaluate_run(out / "gmvae", split="test", num_samples=args.samples, device="cpu").summary
        results["gmvae"] = {"cluster_accuracy": summary["cluster_accuracy"], "nmi": summary["nmi"],
                            "log_likelihood": summary["log_likelihood"], "train_seconds": seconds,
                            "kmeans": kmeans_scores(trainer.data, args.seed)}
        print(json.dumps(results["gmvae"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| labels | M2 test accuracy | supervised only, same classifier | M2 test log p(x) |\n|---|---|---|---|")
    for row in results["m2"]:
        print(f"| {row['labels']} | {100 * row['m2_accuracy']:.1f}% | {100 * row['supervised_accuracy']:.1f}% | "
              f"{row['m2_log_likelihood']:.2f} |")
    if results["gmvae"]:
        g = results["gmvae"]
        print(f"\nGMVAE: cluster accuracy {100 * g['cluster_accuracy']:.1f}%, NMI {g['nmi']:.3f}; "
              f"k-means on pixels: {100 * g['kmeans']['cluster_accuracy']:.1f}%, NMI {g['kmeans']['nmi']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
