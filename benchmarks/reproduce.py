"""The reproduction table (REPRODUCTION.md): one row of it per call, through the CLI.

    python benchmarks/reproduce.py --row N --out DIR [--epochs E] [--variants a,b] [--samples K]
                                   [--limit N] [--seed S] [--resume] [--tiny] [--data-root DIR]

Each row trains its cells with ``pyro-vae train`` (shipped specs plus ``--set`` overrides:
the protocol below), evaluates them with ``pyro-vae evaluate``, and writes
``DIR/rowN.json``: the row's model, data and protocol, the published figure and its
source, ours with its standard error, the exact ``pyro-vae`` commands, the budget reached
(epochs, best epoch), the machine and the wall time. The commands run in this process
(``pyro_vae.cli.main``), exactly as the shell would run them.

Rows (the issue's numbering):

1. VAE, standard prior, static MNIST, the VampPrior paper's protocol: gated MLPs 300-300,
   latent 40, Bernoulli, Adam 5e-4, batches of 100, linear KL warm-up over 100 epochs,
   early stopping on the validation ELBO with patience 50, at most 2000 epochs; log p(x)
   with K = 5000 on 2000 validation images (the shared data have no test split).
2. The VampPrior (500 pseudo-inputs), same protocol.
3. IWAE, k = 5 and k = 50, one stochastic layer (Burda et al., 2016: MLPs 200-200 tanh,
   latent 50, Adam from 1e-3 down to 1e-4 in their stages, batches of 20), static MNIST; ``--dynamic``: the MNIST IDX files
   dynamically binarized (training images 50,000, scored on the official test images).
4. Two stochastic layers with the VampPrior (the shipped ``hvae_vampprior``), row 1's protocol.
5. M2 with 100 labels (balanced) on MNIST: the first 50,000 IDX training images, the last
   10,000 for validation, accuracy of argmax q(y|x) on the official 10,000 test images;
   the shipped ``m2_mnist`` (Bernoulli on dynamically binarized images, MLPs of 500, latent 50,
   alpha 80,000), ``trace_enum``, batches of 100. ``m1_m2``: Kingma et al.'s M1+M2, M2 with the
   same sizes (``m2_on_codes``, Gaussian) on the posterior means of a VAE (M1, MLPs
   600-600, latent 50, ``--features-epochs``) trained on the same images (``pyro-vae encode``
   writes them as a data file).
6. GMVAE with VaDE's initialization, all 60,000 MNIST training images, clustering accuracy
   and NMI on the 10,000 test images (the validation ELBO is watched on them too; no labels
   are read in training, no early stopping).
7. Standard prior and VampPrior on Caltech 101 Silhouettes (4100 training, 2264 validation
   images), row 1's protocol, log p(x) on the validation split.
8. Fashion-MNIST, standard prior and VampPrior, row 1's networks and schedule, a discretized
   logistic likelihood over the 256 gray levels; the training files split 50,000 / 5,000
   validation / 5,000 held out (seed 0), log p(x) (and bits per dimension) on the held-out part.

``--epochs`` caps the budget (default: the protocol's); ``--resume`` continues each cell's
run directory (``pyro-vae train --resume RUN --set inference.schedule.epochs=E``) or, where
it already ended, only evaluates it; ``--tiny`` checks the script end to end (a few hundred
examples, 1 epoch unless ``--epochs`` says otherwise, K = 5 on 50 held-out examples); ``--data-root`` reads the data from another folder laid out
like ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyro_vae import cli
from pyro_vae.data import read_source
from pyro_vae.spec import load_spec

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

GATED = '{kind="gated_mlp", hidden=[300,300]}'
PAPER = [  # Tomczak & Welling (2018): networks and schedule
    "model.latent_dim=40", "model.likelihood.kind=bernoulli", "model.posterior.kind=diagonal_normal",
    "model.encoder.kind=gated_mlp", "model.encoder.hidden=[300,300]",
    "model.decoder.kind=gated_mlp", "model.decoder.hidden=[300,300]",
    "inference.optimizer.lr=5e-4", "inference.schedule.batch_size=100",
    "inference.schedule.kl_warmup_epochs=100", "inference.schedule.patience=50",
    "data.test_fraction=0",  # all the training images (the default holds 10% out as a test split)
]
STANDARD = ["model.prior.kind=standard_normal"]
VAMP = ["model.prior.kind=vamp", "model.prior.components=500"]
BURDA = [  # Burda et al. (2016), one stochastic layer
    "model.latent_dim=50", "model.encoder.hidden=[200,200]", "model.encoder.activation=tanh",
    "model.decoder.hidden=[200,200]", "model.decoder.activation=tanh",
    "inference.optimizer.lr=1e-3", "inference.optimizer.eps=1e-4", "inference.lr_schedule.kind=stages",
    "inference.schedule.batch_size=20", "data.test_fraction=0",
]
M2 = [  # the shipped m2_mnist (Kingma et al., 2014: MLPs of 500, latent 50) on MNIST, 100 balanced labels
    "data.binarize=dynamic", "inference.schedule.batch_size=100", "data.labelled=100",
]
M1 = [  # Kingma et al. (2014), M1: a VAE whose posterior means are M2's data (M1+M2)
    "model.latent_dim=50", "model.encoder.hidden=[600,600]", "model.decoder.hidden=[600,600]",
    "data.binarize=dynamic", "inference.schedule.batch_size=100",
]
M2_ON_CODES = [  # the shipped m2_on_codes (M2 with Kingma et al.'s sizes, Gaussian) on M1's codes
    "inference.schedule.batch_size=100", "data.labelled=100",
]
VADE = [  # the shipped gmvae_vade (Jiang et al., 2017: networks, full-covariance p(z|y), VaDE's start)
    "data.binarize=dynamic", "inference.optimizer.lr=2e-3", "inference.schedule.batch_size=100",
]
EIGHT_BIT = [  # row 8: the discretized logistic over 0..255 (one component per pixel), row 1's networks
    "model.likelihood.kind=discretized_logistic", "model.likelihood.components=1", "data.normalize=false",
    "model.latent_dim=40", "model.encoder.kind=gated_mlp", "model.encoder.hidden=[300,300]",
    "model.decoder.kind=gated_mlp", "model.decoder.hidden=[300,300]",
    "inference.optimizer.lr=5e-4", "inference.schedule.batch_size=100",
    "inference.schedule.kl_warmup_epochs=100", "inference.schedule.patience=50",
]


@dataclass
class Cell:
    model: str
    sets: list
    inference: str | None = None
    published: float | None = None
    features: Cell | None = None  # M1+M2: this model is trained first; the cell's model on its codes


@dataclass
class Row:
    title: str
    data: str  # a key of DATASETS
    cells: dict
    epochs: int  # the protocol's budget (its cap, with early stopping)
    metric: str  # log_likelihood, accuracy or cluster_accuracy
    split: str
    samples: int
    limit: int | None
    source: str
    protocol: str
    extra: list = field(default_factory=list)  # further --set, e.g. data.binarize


ROWS = {
    1: Row("VAE, standard prior, static MNIST", "static",
           {"standard": Cell("vampprior", [*PAPER, *STANDARD], published=-88.56)},
           2000, "log_likelihood", "valid", 5000, 2000,
           "Tomczak & Welling (2018), table 2 (test split, K = 5000)",
           "gated MLPs 300-300, latent 40, Bernoulli, Adam 5e-4, batch 100, KL warm-up 100 epochs, "
           "patience 50 after the warm-up, at most 2000 epochs; 50,000 training images"),
    2: Row("VampPrior (500 pseudo-inputs), static MNIST", "static",
           {"vamp": Cell("vampprior", [*PAPER, *VAMP], published=-85.57)},
           2000, "log_likelihood", "valid", 5000, 2000,
           "Tomczak & Welling (2018), table 2 (test split, K = 5000)", "row 1's"),
    3: Row("IWAE, one stochastic layer, static MNIST", "static",
           {"iwae_k5": Cell("bernoulli_mlp", BURDA, "iwae_k5", published=-87.63),
            "iwae_k50": Cell("bernoulli_mlp", BURDA, "iwae_k50", published=-87.10)},
           3280, "log_likelihood", "valid", 5000, 2000,
           "Burda et al. (2016), appendix (static MNIST, test split, K = 5000)",
           "MLPs 200-200 tanh, latent 50, Bernoulli, the IWAE bound with k = 5 or 50, Adam (beta1 0.9, beta2 "
           "0.999, eps 1e-4), batch 20, no warm-up, no early stopping, 3280 epochs: 3^i epochs at 1e-3 * "
           "10^(-i/7) for i = 0..7 (inference.lr_schedule = stages)"),
    4: Row("HVAE (two stochastic layers) + VampPrior, static MNIST", "static",
           {"hvae_vamp": Cell("hvae_vampprior", [p for p in PAPER if "encoder" not in p and "decoder" not in p],
                              published=-83.19)},
           2000, "log_likelihood", "valid", 5000, 2000,
           "Tomczak & Welling (2018), table 2 (test split, K = 5000)",
           "z2 (40) above z1 (40), top-down guide, decoder reading both, gated 300-300 everywhere; row 1's schedule"),
    5: Row("M2, 100 labels, MNIST", "mnist_semi",
           {"m2": Cell("m2_mnist", M2, "trace_enum", published=0.880),
            "m1_m2": Cell("m2_on_codes", M2_ON_CODES, "trace_enum", published=0.9667,
                          features=Cell("bernoulli_mlp", M1))},
           200, "accuracy", "test", 10, None,
           "Kingma et al. (2014), table 1 (M2 88.0%, M1+M2 96.7%; 93.2% in Pyro's SS-VAE tutorial with an "
           "auxiliary loss)",
           "m2: the shipped m2_mnist (alpha 80,000), Bernoulli on dynamically binarized images, MLPs "
           "of 500, latent 50, trace_enum (y summed), Adam 1e-3, batch 100, 100 balanced labels, 50,000 / 10,000 / "
           "official 10,000 test images; m1_m2: M1 (bernoulli_mlp, MLPs 600-600, latent 50, --features-epochs) "
           "trained on the same images, then the shipped m2_on_codes (M2's sizes, a Gaussian likelihood) on M1's "
           "posterior means (pyro-vae encode)"),
    6: Row("GMVAE with VaDE's initialization, MNIST clustering", "mnist_all",
           {"gmvae_vade": Cell("gmvae_vade", VADE, "trace_enum", published=0.823)},
           300, "cluster_accuracy", "test", 10, None,
           "Dilokthanakul et al. (2016): 82.3 +- 3.8% (GMVAE); Jiang et al. (2017): 94.5% (VaDE)",
           "the shipped gmvae_vade: VaDE's networks (784-500-500-2000-10, ReLU), Bernoulli on dynamically binarized "
           "images, model.discrete.init = vade (autoencoder pretrained, the likeliest of 10 full-covariance GMMs on its "
           "codes), p(z|y) with a full covariance, trace_enum, Adam 2e-3, "
           "batch 100, 60,000 training images, no early stopping"),
    7: Row("Standard prior and VampPrior, Caltech 101 Silhouettes", "caltech",
           {"standard": Cell("vampprior", [*PAPER, *STANDARD]), "vamp": Cell("vampprior", [*PAPER, *VAMP])},
           2000, "log_likelihood", "valid", 5000, None,
           "Tomczak & Welling (2018), table 2 (test split)", "row 1's, on 4100 training images"),
    8: Row("Standard prior and VampPrior, Fashion-MNIST (8-bit)", "fashion",
           {"standard": Cell("vampprior", [*EIGHT_BIT, *STANDARD]), "vamp": Cell("vampprior", [*EIGHT_BIT, *VAMP])},
           2000, "log_likelihood", "test", 5000, 2000, "none (no published anchor asked)",
           "row 1's networks and schedule, a discretized logistic likelihood over the 256 levels (data unnormalized), "
           "50,000 / 5,000 / 5,000 of the training files"),
}


# --- data ----------------------------------------------------------------------------------


def _idx(root: Path, folder: str, stem: str):
    raw = read_source(None, str(root / folder / f"{stem}-images-idx3-ubyte.gz"))
    return raw.splits["train"].array.reshape(-1, 784).astype(np.uint8), np.asarray(raw.labels["train"])


def _subset(arrays: dict, sizes: dict) -> dict:
    """The first ``sizes[split]`` rows of each split, after a seeded shuffle (some files are
    ordered by digit), with their labels."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in sizes.items():
        if split not in arrays:
            continue
        keep = rng.permutation(len(arrays[split]))[:n]
        out[split] = arrays[split][keep]
        if f"{split}_labels" in arrays:
            out[f"{split}_labels"] = arrays[f"{split}_labels"][keep]
    return out


def _idx_pair(folder: str, stem: str) -> list:
    return [f"{folder}/{stem}-images-idx3-ubyte.gz", f"{folder}/{stem}-labels-idx1-ubyte.gz"]


# the files of ../shared/data each row's data is built from
MNIST_FILES = _idx_pair("mnist-idx", "train") + _idx_pair("mnist-idx", "t10k")
SOURCES = {"static": ["binarized_mnist.npz"], "caltech": ["caltech101_silhouettes.npz"],
           "mnist_semi": MNIST_FILES, "mnist_all": MNIST_FILES, "fashion": _idx_pair("fashion-mnist", "train")}


def absent_source(name: str, root: Path, row: int) -> str | None:
    """Where ``root`` lacks a file that data ``name`` is built from: the one-line problem and
    fix; else None."""
    absent = next((root / f for f in SOURCES[name] if not (root / f).is_file()), None)
    return None if absent is None else f"{absent} is absent (row {row} reads it from the shared data); give --data-root"


def prepare_data(name: str, root: Path, folder: Path, tiny: bool) -> Path:
    """The row's data file: the shared file itself, or an .npz built from the IDX files
    under ``folder`` (the splits of the row's protocol)."""
    if name in ("static", "caltech") and not tiny:
        return root / ("binarized_mnist.npz" if name == "static" else "caltech101_silhouettes.npz")
    path = folder / f"{name}{'_tiny' if tiny else ''}.npz"
    if path.exists():
        return path
    if name in ("static", "caltech"):
        with np.load(root / ("binarized_mnist.npz" if name == "static" else "caltech101_silhouettes.npz")) as f:
            arrays = {k: f[k] for k in f.files if k in ("train", "valid", "train_labels", "valid_labels")}
    elif name in ("mnist_semi", "mnist_all"):
        x, y = _idx(root, "mnist-idx", "train")
        tx, ty = _idx(root, "mnist-idx", "t10k")
        if name == "mnist_semi":  # Kingma et al.: the first 50,000 for training, the last 10,000 for validation
            cut = len(x) - len(x) // 6
            arrays = dict(train=x[:cut], train_labels=y[:cut], valid=x[cut:], valid_labels=y[cut:])
        else:  # every training image; the test images serve as the (unlabelled) validation split too
            arrays = dict(train=x, train_labels=y, valid=tx, valid_labels=ty)
        arrays.update(test=tx, test_labels=ty)
    elif name == "fashion":
        x, y = _idx(root, "fashion-mnist", "train")
        order = np.random.default_rng(0).permutation(len(x))
        cut1, cut2 = len(x) - len(x) // 6, len(x) - len(x) // 12
        arrays = {}
        for split, rows in (("train", order[:cut1]), ("valid", order[cut1:cut2]), ("test", order[cut2:])):
            arrays[split], arrays[f"{split}_labels"] = x[rows], y[rows]
    else:
        raise ValueError(name)
    if tiny:
        arrays = _subset(arrays, {"train": 300, "valid": 100, "test": 100})
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# --- running -------------------------------------------------------------------------------


def pyro_vae(argv: list) -> int:
    """``pyro-vae ARGV`` in this process; its output echoed."""
    print("$ pyro-vae " + shlex.join(argv), flush=True)
    return cli.main(argv)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def pretrains(cell: Cell) -> bool:
    """Whether the cell's model starts as VaDE does (``model.discrete.init = "vade"``)."""
    discrete = load_spec(model=cell.model, overrides=[s for s in cell.sets if s.startswith("model.")]).model.discrete
    return discrete is not None and discrete.init == "vade"


def features(cell: Cell, data: Path, run: Path, args) -> tuple[Path, list]:
    """M1+M2: train ``cell`` (M1) on ``data`` unless a finished run is there, encode the data
    with it; the codes file (an .npz data file) and the commands run."""
    m1, codes = run.with_name(run.name + "_m1"), run.with_name(run.name + "_codes.npz")
    epochs = f"inference.schedule.epochs={1 if args.tiny else args.features_epochs}"
    sets = [*cell.sets, epochs, f"inference.schedule.seed={args.seed}"]
    commands = [["train", "--model", cell.model, "--data", str(data), *[a for s in sets for a in ("--set", s)],
                 "--out", str(m1), "--quiet"], ["encode", str(m1), "--out", str(codes)]]
    if args.resume and (m1 / "checkpoint.pt").exists():
        if _json(m1 / "summary.json").get("status") in ("completed", "early_stopped"):
            commands = commands[1:] if not codes.exists() else []
        else:  # interrupted: M1 goes on where it stopped, and its codes are written anew
            commands[0] = ["train", "--resume", str(m1), "--set", epochs, "--quiet"]
    if commands and codes.exists():
        codes.unlink()  # M1 trains on: its codes are stale
    for argv in commands:
        if (code := pyro_vae(argv)) != 0:
            raise SystemExit(code)
    return codes, commands


def run_cell(name: str, cell: Cell, row: Row, data: Path, run: Path, args) -> dict:
    """Train (or resume) one cell and evaluate it; its figures, commands and budget."""
    first = []
    if cell.features is not None:
        data, first = features(cell.features, data, run, args)
    epochs = args.epochs or row.epochs
    sets = [*cell.sets, *row.extra, *args.set, f"inference.schedule.epochs={epochs}",
            f"inference.schedule.seed={args.seed}"]
    if pretrains(cell):
        sets.append(f"model.discrete.pretrain_epochs={1 if args.tiny else args.pretrain_epochs}")
    train = ["train", "--model", cell.model, *(["--inference", cell.inference] if cell.inference else []),
             "--data", str(data), *[a for s in sets for a in ("--set", s)], "--out", str(run), "--quiet"]
    commands, started = [], time.perf_counter()
    summary = _json(run / "summary.json")
    if args.resume and (run / "checkpoint.pt").exists():
        ended = summary.get("status") in ("completed", "early_stopped")
        if not ended or (summary.get("status") == "completed" and summary.get("epochs", 0) < epochs):
            commands.append(["train", "--resume", str(run), "--set", f"inference.schedule.epochs={epochs}", "--quiet"])
    else:
        commands.append(train)
    for argv in commands:
        code = pyro_vae(argv)
        if code != 0:
            raise SystemExit(code)
    train_wall = time.perf_counter() - started
    evaluate = ["evaluate", str(run), "--split", row.split, "--samples", str(args.samples or row.samples),
                "--seed", "0", *(["--limit", str(args.limit or row.limit)] if (args.limit or row.limit) else [])]
    code = pyro_vae(evaluate)
    if code != 0:
        raise SystemExit(code)
    summary = _json(run / "summary.json")
    result = _json(run / "evaluation" / f"{row.split}.json")
    ours, se = _figure(result, row.metric)
    return {
        "cell": name, "model": cell.model, "inference": cell.inference or "(the spec's)", "metric": row.metric,
        "value": ours, "se": se, "published": cell.published, "split": row.split, "n": result.get("n"),
        "samples": result.get("samples"), "nmi": result.get("nmi"), "accuracy": result.get("accuracy"),
        "log_likelihood": result.get("log_likelihood"), "log_likelihood_se": result.get("log_likelihood_se"),
        "bits_per_dim": None if result.get("log_likelihood") is None else -result["log_likelihood"] / (784 * math.log(2)),
        "epochs": summary.get("epochs"), "best_epoch": summary.get("best_epoch"), "status": summary.get("status"),
        "train_seconds": summary.get("train_seconds"),
        "seconds_per_epoch": (summary.get("train_seconds") or 0) / max(summary.get("epochs") or 1, 1),
        "wall_seconds": time.perf_counter() - started, "train_wall_seconds": train_wall,
        "run": str(run), "commands": ["pyro-vae " + shlex.join(a) for a in [*first, train, evaluate]],
    }


def _figure(result: dict, metric: str):
    """The row's figure and its standard error: over images for log p(x); sqrt(p(1-p)/n) for an accuracy."""
    value = result.get(metric)
    if value is None:
        return None, None
    if metric == "log_likelihood":
        return value, result.get("log_likelihood_se")
    return value, math.sqrt(value * (1 - value) / max(result.get("n") or 1, 1))


def paired(first: dict, other: dict, split: str) -> dict | None:
    """``other`` minus ``first`` in log p(x), image by image on the images both were scored on:
    the mean difference and its standard error over images (far smaller than either SE,
    since the images' own difficulty cancels)."""
    runs = [np.load(Path(c["run"]) / "evaluation" / f"{split}.npz") for c in (first, other)]
    common, a, b = np.intersect1d(runs[0]["index"], runs[1]["index"], return_indices=True)
    if len(common) < 2:
        return None
    d = runs[1]["log_likelihood"][b].astype(np.float64) - runs[0]["log_likelihood"][a].astype(np.float64)
    return {"cell": other["cell"], "against": first["cell"], "diff": float(d.mean()),
            "se": float(d.std(ddof=1) / math.sqrt(len(d))), "n": int(len(d))}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def parse(argv):
    parser = cli.OneLineParser(prog="reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    count = cli.positive_count
    parser.add_argument("--row", type=int, required=True, choices=sorted(ROWS))
    parser.add_argument("--out", required=True, help="folder for the row's run directories and rowN.json")
    parser.add_argument("--epochs", type=count, help="budget cap (default: the protocol's)")
    parser.add_argument("--variants", help="comma-separated cells of the row (default: all)")
    parser.add_argument("--samples", type=count, help="importance samples K (default: the row's)")
    parser.add_argument("--limit", type=count, help="held-out examples evaluated (default: the row's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=count, default=10, help="row 6: VaDE's autoencoder pretraining")
    parser.add_argument("--features-epochs", type=count, default=30, help="row 5's m1_m2: M1's epochs")
    parser.add_argument("--dynamic", action="store_true",
                        help="row 3: dynamically binarized MNIST IDX files, scored on the official test images")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further spec override")
    parser.add_argument("--resume", action="store_true", help="continue the row's run directories")
    parser.add_argument("--tiny", action="store_true", help="a few hundred examples, 1 epoch, K = 5 (a check)")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="a folder laid out like ../shared/data")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    row = ROWS[args.row]
    root, out = Path(args.data_root), Path(args.out)
    cells = row.cells
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not chosen or any(v not in cells for v in chosen):
            print(f"reproduce: --variants: row {args.row} has {', '.join(cells)}", file=sys.stderr)
            return 2
        cells = {v: cells[v] for v in chosen}
    data_name, name = row.data, f"row{args.row}"
    if args.dynamic:
        if args.row != 3:
            print("reproduce: --dynamic is for row 3 (IWAE)", file=sys.stderr)
            return 2
        data_name, name = "mnist_semi", "row3_dynamic"  # its own runs and record beside static MNIST's
        row = Row(**{**row.__dict__, "split": "test", "title": "IWAE, one stochastic layer, dynamically binarized MNIST",
                     "source": "Burda et al. (2016), table 1 (dynamically binarized MNIST, test split, K = 5000; "
                               "the k = 5 figure not quoted here)"})
        cells = {k: Cell(c.model, [*c.sets, "data.binarize=dynamic"], c.inference,
                         {"iwae_k50": -84.78}.get(k)) for k, c in cells.items()}
    if args.tiny:  # a check of the script: 1 epoch unless given, K = 5 on 50 held-out examples
        args.epochs, args.samples, args.limit = args.epochs or 1, 5, 50
    if absent := absent_source(data_name, root, args.row):
        print(f"reproduce: {absent}", file=sys.stderr)
        return 2
    data = prepare_data(data_name, root, out / "data", args.tiny)
    started = time.perf_counter()
    results = [run_cell(cell_name, cell, row, data, out / name / cell_name, args) for cell_name, cell in cells.items()]
    record = {
        "row": args.row, "title": row.title, "data": data_name + (" (dynamic)" if args.dynamic else ""),
        "data_file": str(data), "protocol": row.protocol, "source": row.source, "metric": row.metric,
        "split": row.split, "budget_epochs": args.epochs or row.epochs, "protocol_epochs": row.epochs,
        "tiny": args.tiny, "seed": args.seed, "machine": machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "wall_seconds": time.perf_counter() - started,
        "command": "python benchmarks/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "cells": results,
        "paired": [p for c in results[1:] if row.metric == "log_likelihood"
                   for p in [paired(results[0], c, row.split)] if p is not None],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(f"\nrow {args.row}: {row.title} ({record['budget_epochs']} epochs at most, {machine()})")
    for r in results:
        se = "" if r["se"] is None else f" +- {r['se']:.3g}"
        print(f"  {r['cell']}: {row.metric} {r['value']}{se} on {r['n']} {row.split} examples; published "
              f"{r['published']}; epochs {r['epochs']} (best {r['best_epoch']}), {r['seconds_per_epoch']:.1f} s/epoch")
    for p in record["paired"]:
        print(f"  {p['cell']} - {p['against']}, paired over {p['n']} images: {p['diff']:+.2f} +- {p['se']:.2f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
