"""q(y|x) on the test images after every epoch, for the reproduction table's rows with a
categorical y (REPRODUCTION.md rows 5 and 6): M2's accuracy (argmax q(y|x) read as the label)
or the GMVAE's clustering accuracy (the best one-to-one matching of clusters to labels), both
with NMI, on the official 10,000 MNIST test images; for row 5 also the accuracy on the 10,000
labelled validation images (``valid_accuracy``: the reading that chooses an epoch, the test
images only reporting it); for row 6 also right after VaDE's start, before the first epoch. Trains the row's spec exactly as ``benchmarks/reproduce.py`` does
(the same ``--set`` list), through ``pyro_vae.workflows.train.train``, writing the run to
``--out``/run and one JSON line per measurement to ``--out``/accuracy_by_epoch.jsonl (begun
afresh, as the run is); the same command with ``--resume`` and more ``--epochs`` continues
that run exactly where it stopped (``pyro-vae train --resume``), appending its readings, first
the reading of the epoch it resumes from where a kill lost it:

    python benchmarks/accuracy_by_epoch.py --row 5 --epochs 5 --out runs/m2_by_epoch
    python benchmarks/accuracy_by_epoch.py --row 5 --epochs 20 --out runs/m2_by_epoch --resume
    python benchmarks/accuracy_by_epoch.py --row 6 --epochs 10 --pretrain-epochs 50 --seed 1 --out runs/vade_s1
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import M2, VADE, absent_source, prepare_data  # noqa: E402

from pyro_vae.cli import OneLineParser, positive_count  # noqa: E402
from pyro_vae.devices import denormals_flushed  # noqa: E402
from pyro_vae.errors import Interrupted, UserError  # noqa: E402
from pyro_vae.infer.metrics import classification_summary  # noqa: E402
from pyro_vae.spec import load_spec  # noqa: E402
from pyro_vae.workflows.train import resume, train  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROW_DATA = {5: "mnist_semi", 6: "mnist_all"}  # reproduce.py's splits of each row


def main(argv=None) -> list:
    parser = OneLineParser(prog="accuracy_by_epoch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", type=int, choices=(5, 6), required=True)
    parser.add_argument("--epochs", type=positive_count, required=True)
    parser.add_argument("--pretrain-epochs", type=positive_count, default=10, help="row 6: VaDE's autoencoder epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--init", metavar="RUN", help="start from this run's weights with a fresh optimizer (as "
                        "pyro-vae train --init), e.g. to continue it at another learning rate")
    parser.add_argument("--resume", action="store_true", help="continue --out's run to --epochs, exactly (its "
                        "spec, seed and data kept; --set and --init are refused)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-root", default=str(DATA), help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--tiny", action="store_true", help="300 training images: checks the script end to end")
    args = parser.parse_args(argv)
    out, root = Path(args.out), Path(args.data_root)
    if args.resume and (args.set or args.init):
        parser.error("--resume continues the run as its spec says: leave out --set and --init")
    started, lines = time.perf_counter(), out / "accuracy_by_epoch.jsonl"
    measured = []
    read = [json.loads(text) for text in lines.read_text().splitlines()] if args.resume and lines.exists() else []
    if {line["row"] for line in read} - {args.row}:
        parser.error(f"--row {args.row}: {lines} holds readings of row {read[0]['row']}; give --row {read[0]['row']}")

    def measure(trainer) -> None:
        summary = _read(trainer, "test")
        line = {"row": args.row, "seed": trainer.inference.schedule.seed, "epoch": trainer.state.epoch,
                "accuracy": summary["accuracy"], "cluster_accuracy": summary["cluster_accuracy"], "nmi": summary["nmi"]}
        if args.row == 5:  # M2's held-out labelled images, to choose an epoch without the test images
            line["valid_accuracy"] = _read(trainer, "valid")["accuracy"]
        line["seconds"] = round(time.perf_counter() - started, 1)
        with lines.open("a" if args.resume or measured else "w") as f:  # a new run, new readings
            f.write(json.dumps(line) + "\n")
        measured.append(line)
        print(json.dumps(line), flush=True)

    def measure_if_lost(trainer) -> None:  # killed after the checkpoint, before its reading
        if trainer.state.epoch not in {line["epoch"] for line in read}:
            measure(trainer)

    absent = None if args.resume else absent_source(ROW_DATA[args.row], root, args.row)
    if absent:
        parser.exit(2, f"accuracy_by_epoch: error: {absent}\n")
    try:
        with denormals_flushed():  # before torch's threads start, so that each flushes (pyro_vae.devices)
            _run(args, out, root, measure, measure_if_lost)
    except UserError as exc:
        parser.exit(2, f"accuracy_by_epoch: error: {exc.for_command_line()}\n")
    except Interrupted as exc:  # SIGINT / SIGTERM: the run wrote a checkpoint, the readings are whole lines
        parser.exit(128 + exc.signum, f"accuracy_by_epoch: {exc}; checkpoint written. Continue with the same "
                    f"command and --resume (--epochs as many or more)\n")
    return measured


def _run(args, out: Path, root: Path, measure, measure_if_lost) -> None:
    if args.resume:  # the run's spec and data files, as the first command wrote them
        resume(out / "run", epochs=args.epochs, progress=False, before=measure_if_lost, on_epoch=measure)
    else:
        _train(args, out, root, measure)


def _read(trainer, split: str) -> dict:
    """Accuracy, cluster accuracy and NMI of argmax q(y|x) on ``split`` against its labels."""
    x, labels = trainer.data.scored(split, 0), trainer.data.labels[split]
    with torch.no_grad():
        probs = torch.cat([trainer.vae.q_y_logits(x[i : i + 2000]).softmax(-1) for i in range(0, len(x), 2000)])
    return classification_summary(probs, labels)


def _train(args, out: Path, root: Path, measure) -> None:
    if args.row == 5:
        model, sets = "m2_mnist", list(M2)
    else:
        model, sets = "gmvae_vade", [*VADE, f"model.discrete.pretrain_epochs={args.pretrain_epochs}"]
    data = prepare_data(ROW_DATA[args.row], root, out / "data", args.tiny)
    spec = load_spec(model=model, inference="trace_enum", data=str(data),
                     overrides=[*sets, *args.set, f"inference.schedule.epochs={args.epochs}",
                                f"inference.schedule.seed={args.seed}"])
    train(spec, out / "run", force=True, progress=False, before=measure, on_epoch=measure, init=args.init)


if __name__ == "__main__":
    main()
