"""``pyro-vae``: train, sample, evaluate, compare and analyze VAEs from declarative specs.

Bad input (a malformed spec, an unknown kind, unsupported data, a missing or corrupt
file) prints one line naming the problem and the fix, and exits with status 2.
Training that diverges exits with 3; under torchrun, a process whose peer failed exits
with 4; an interrupted run exits with 128 + the signal number after writing a checkpoint
it can be resumed from.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__, distributed, stops
from .devices import denormals_flushed
from .errors import Interrupted, Stopped, TrainingDiverged, UserError
from .spec import DEFAULT_DATA, DEFAULT_INFERENCE, DEFAULT_MODEL, SLOTS, Spec, load_spec, parse_override, shipped, spec_summary
from .registry import trusting_code
from .tracking import TRACKERS

# Each command imports its workflow (and the analysis it prints) when it runs: `--help`, the
# refusals and `train` start without ArviZ, xarray and the comparison statistics.

EXIT_USAGE, EXIT_DIVERGED, EXIT_PEER_FAILED = 2, 3, 4


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message) -> str:
    """A message on one line, whatever user text (a path, a --set value) it quotes."""
    text = str(message)
    for brk in LINE_BREAKS:  # every character str.splitlines breaks at, not only \n
        text = text.replace(brk, brk.encode("unicode_escape").decode("ascii"))
    return text


LINE_BREAKS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _spec_arguments(p: argparse.ArgumentParser, spec_file: bool = False) -> None:
    replaces = "; with --spec, replaces the file's [{}] table" if spec_file else ""
    p.add_argument("--model", metavar="NAME|PATH",
                   help=f"a shipped model spec (see `pyro-vae specs`) or a .toml file with a [model] table "
                   f"(default: {DEFAULT_MODEL}{replaces.format('model')})")
    p.add_argument("--inference", metavar="NAME|PATH",
                   help=f"a shipped inference spec or a .toml file with an [inference] table "
                   f"(default: {DEFAULT_INFERENCE}; trace_enum for a model with a discrete latent"
                        f"{replaces.format('inference')})")
    p.add_argument("--data", metavar="digits|PATH",
                   help="a named data set or a file: .npz (arrays train, valid, test), .npy, .csv/.tsv, .h5ad (AnnData) "
                   f"or MNIST IDX (default: {DEFAULT_DATA}{replaces.format('data')})")
    if spec_file:
        p.add_argument("--spec", metavar="FILE",
                       help="a whole spec to start from (e.g. RUN/spec.toml, to repeat a run); --model, --inference "
                       "and --data, when given, replace its tables, and --set applies last")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec key; VALUE is read as TOML, else as a string "
                   "(e.g. --set model.latent_dim=32 --set model.encoder.hidden=[400,400] --set model.prior.kind=vamp); repeatable")
    p.add_argument("--track", choices=TRACKERS.names(),
                   help="follow the run in TensorBoard (RUN/tensorboard) or MLflow (a local store, RUN/mlflow.db, "
                   "or --set tracking.uri=URI): the spec, every metrics row, the figures and the summary; "
                   "the same as --set tracking.kind=KIND; needs pip install 'pyro-vae[KIND]'")


def _trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="import the modules that a spec file or a run's spec.toml names as kinds "
                   "(package.module:Name); without it such a kind is refused, unless given with --set. "
                   "Pass it only for specs and runs whose author you trust: importing a module runs its code")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pyro-vae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a VAE and write a run directory",
                       description="Train a VAE with SVI and write a run directory: spec.toml, metrics.csv, "
                       "summary.json, checkpoint.pt and figures/.")
    _spec_arguments(p, spec_file=True)
    p.add_argument("--out", metavar="DIR", help="the run directory (default: runs/<model>-<date>-<time>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its checkpoint (uses RUN/spec.toml); "
                   "with --set inference.schedule.epochs=N, train a finished run on to N epochs")
    p.add_argument("--init", metavar="RUN", help="start from the weights of a trained run (same model table), "
                   "with a fresh optimizer")
    p.add_argument("--check", action="store_true", help="validate the spec, the data and the model, print the resolved spec, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _trust_argument(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("sample", help="decode samples from the prior of a trained run",
                       description="Draw z ~ p(z), decode E[x|z], and write RUN/samples/samples.png and samples.npz.")
    p.add_argument("run", metavar="RUN", help="a run directory written by pyro-vae train")
    p.add_argument("--n", type=positive_count, default=64, help="how many samples (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                   help="a covariate's value for every sample, e.g. label=7 (a model with covariates; repeatable; "
                   "covariates not given are drawn from the training data's)")
    _trust_argument(p)
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("specs", help="list shipped specs and every registered kind",
                       description="List the shipped model and inference specs, and every registered kind per slot with its parameters.")
    p.set_defaults(handler=cmd_specs)

    p = sub.add_parser("evaluate", help="importance-sampled held-out log-likelihood of a run",
                       description="Estimate log p(x) by importance sampling with q(z|x) (K samples per example), with the "
                       "ELBO, KL, reconstruction and active units; writes RUN/evaluation/<split>.json and <split>.npz.")
    _heldout_arguments(p, samples=5000)
    _refine_argument(p)
    _trust_argument(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("compare", help="train and compare model variants or estimators on equal terms",
                       description="Vary any key of the spec (priors, posteriors, likelihoods, networks, estimators, "
                       "latent size, ...): train every cell with every seed from the same data order and, for the parts "
                       "the cells share, the same initial weights; evaluate all on the same held-out examples with the "
                       "same K; write comparison.csv (a row per cell and seed), comparison.md (mean +- paired SE per "
                       "cell), comparison.json and figures: held-out log p(x) with paired differences to a reference "
                       "cell, ELBO, KL, active units, time per step, and gradient SNR where the estimator or the "
                       "posterior varies. Run again with the same arguments, it continues an interrupted comparison.",
                       epilog="examples:\n"
                       "  pyro-vae compare --vary model.prior.kind=standard_normal,mixture,vamp --seeds 3 --out runs/priors\n"
                       "  pyro-vae compare --vary model.posterior.kind=diagonal_normal,iaf "
                       "--vary inference.estimator=trace_elbo,iwae:k=5 --out runs/grid\n"
                       "  pyro-vae compare --estimators trace_elbo,iwae:k=5 --out runs/estimators",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _spec_arguments(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a key of the spec and its values, one cell each; a slot's table takes kind[:key=value...] "
                   "(model.prior=mixture:components=10); repeat the flag to cross several keys")
    p.add_argument("--zip", dest="zip_axes", action="store_true",
                   help="pair the --vary values element-wise instead of crossing them (every key the same number)")
    p.add_argument("--estimators", metavar="LIST",
                   help="shorthand for --vary inference.estimator=LIST, each kind[:key=value...], "
                   "e.g. trace_elbo,trace_mean_field,iwae:k=5,iwae_dreg:k=5")
    p.add_argument("--seeds", type=positive_count, default=3, help="seeds 0..N-1 per cell (default: %(default)s)")
    p.add_argument("--reference", metavar="LABEL", help="the cell differences are taken against (default: the first)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the comparison directory (one run directory per cell and seed inside); the same command "
                   "run again continues the comparison there")
    p.add_argument("--force", action="store_true", help="replace an existing comparison in --out")
    p.add_argument("--split", default="valid", choices=["valid", "test", "train"], help="held-out split (default: %(default)s)")
    p.add_argument("--samples", type=positive_count, default=1000, metavar="K", help="importance samples per example (default: %(default)s)")
    p.add_argument("--limit", type=positive_count, default=2000, metavar="N", help="a random subset of N held-out examples, the same for all (default: %(default)s)")
    p.add_argument("--snr-repeats", type=positive_count, default=50, metavar="M", help="gradient estimates per SNR measurement (default: %(default)s)")
    p.add_argument("--snr-k", default="1,5,20", metavar="K,K,...", help="K values for SNR against K, where the estimator varies (default: %(default)s; empty: skip)")
    _trust_argument(p)
    p.set_defaults(handler=cmd_compare)
    p = sub.add_parser("encode", help="write a run's latent codes of its data, or of other data",
                       description="For every example: the posterior mean and sd of q(z|x) (Monte Carlo for posteriors "
                       "without closed forms), optionally S draws, the labels and the example's row in its source. "
                       "FILE.npz (arrays mean, std, samples, labels, index, split; also train, valid, test and <split>_labels: the "
                       "means as a data file that train --data reads, e.g. M2 on a VAE's codes, M1+M2), FILE.csv (one row per example), "
                       "or FILE.h5ad (for .h5ad input: a copy with obsm['X_pyro_vae'] and obsm['X_pyro_vae_std']; "
                       "the input is never written). Large data are read in chunks.")
    p.add_argument("run", metavar="RUN", help="a run directory written by pyro-vae train")
    p.add_argument("--data", metavar="digits|PATH", help="other data, prepared as the run's were (default: the run's own data)")
    p.add_argument("--split", default="all", choices=["all", "train", "valid", "test"], help="which examples (default: %(default)s)")
    p.add_argument("--samples", type=_nonnegative, default=0, metavar="S", help="draws of z per example to write too (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.npz, FILE.csv or FILE.h5ad")
    p.add_argument("--transform", action="append", default=[], metavar="NAME=VALUE",
                   help="also write each example's reconstruction decoded with this covariate value, e.g. batch=b0 "
                   "(a model with covariates: the batch-corrected data; .npz array 'transformed', .h5ad layer "
                   "'pyro_vae_NAME=VALUE'; repeatable for several covariates at once)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--seed", type=_seed, default=0, help="random seed for the draws (default: %(default)s)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (CUDA when available), cpu, cuda, cuda:N, ... (default: %(default)s)")
    _trust_argument(p)
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser("analyze", help="ArviZ analysis of a run: PSIS diagnostics, figures, report",
                       description="Draw S samples from q(z|x) per example, build ArviZ InferenceData, diagnose q(z|x) "
                       "with PSIS k-hat, and write RUN/analysis/: posterior.nc, diagnostics.json, figures and report.md.")
    _heldout_arguments(p, samples=1000, limit=1000)
    p.add_argument("--draws", type=positive_count, default=200, help="draws per example stored in posterior.nc (default: %(default)s)")
    _refine_argument(p)
    _trust_argument(p)
    p.set_defaults(handler=cmd_analyze)
    return parser


def _refine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=_nonnegative, default=None, metavar="STEPS",
                   help="refine each example's Gaussian q(z|x) by STEPS Adam steps on its own ELBO, the model fixed, and "
                   "use it as the importance proposal: a semi-amortized proposal (Kim et al., 2018) that closes the "
                   "encoder's amortization gap; log p(x) estimates the same quantity with a lower variance and k-hat "
                   "(default: the run's model.refine_steps, 0 unless its spec says: the encoder's q; try 200-1000)")


def _heldout_arguments(p: argparse.ArgumentParser, samples: int, limit: int | None = None) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory written by pyro-vae train")
    p.add_argument("--data", metavar="digits|PATH", help="other data, prepared as the run's were (default: the run's own data)")
    p.add_argument("--split", default="valid", choices=["valid", "test", "train"], help="which split (default: %(default)s)")
    p.add_argument("--samples", type=positive_count, default=samples, metavar="K", help="importance samples per example (default: %(default)s)")
    p.add_argument("--limit", type=positive_count, default=limit, metavar="N", help="a random subset of N examples (default: all)" if limit is None else "a random subset of N examples (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed for the samples and the subset (default: %(default)s)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (CUDA when available), cpu, cuda, cuda:N, ... (default: %(default)s)")


def _whole_number(minimum: int, wanted: str, maximum: int | None = None):
    """An argparse type: a whole number in ``minimum``..``maximum`` (``wanted`` says which in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value
    return parse


positive_count = _whole_number(1, "a positive whole number")
_seed = _whole_number(0, f"a seed 0..{2**63 - 1}", 2**63 - 1)
_nonnegative = _whole_number(0, "a whole number >= 0")


def _say(text: str) -> None:
    """Print on stdout, from one process only (rank 0 under torchrun)."""
    if distributed.current().is_main:
        print(text, flush=True)


def _tell(text: str) -> None:
    """Print on stderr, from one process only."""
    if distributed.current().is_main:
        print(text, file=sys.stderr, flush=True)


# --- commands ------------------------------------------------------------------------


def _nonempty_out(args) -> None:
    if getattr(args, "out", None) == "":
        raise_usage("--out is empty; give a path")


def cmd_train(args) -> int:
    from .workflows.train import check, resume, train
    _nonempty_out(args)
    if args.resume:
        given = [flag for flag, value in (("--spec", args.spec), ("--out", args.out), ("--init", args.init),
                                          ("--model", args.model), ("--inference", args.inference),
                                          ("--data", args.data), ("--check", args.check), ("--track", args.track))
                 if value]
        if given:
            raise_usage(f"--resume continues RUN with its own spec.toml; drop {', '.join(given)}")
        trainer = resume(args.resume, progress=False if args.quiet else None, log=_quiet_log(args),
                         epochs=_extension(args.overrides), tracking=_tracking_destinations(args.overrides))
        return _report_training(trainer, Path(args.resume))
    # resolved on rank 0 and broadcast: the ranks cannot train different specs
    text = distributed.broadcast_text(
        lambda: load_spec(args.model, args.inference, args.data, _overrides(args), spec_file=args.spec).to_toml())
    spec = Spec.from_toml(text)
    if args.check:
        vae, data = check(spec, args.init)
        _say(spec.to_toml().rstrip("\n"))
        n = sum(p.numel() for p in vae.parameters())
        _say(f"# ok: {data.source}, example shape {data.data_shape}, "
             + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()) + f"; {n:,} parameters")
        return 0
    stamp = distributed.broadcast_text(lambda: time.strftime("%Y%m%d-%H%M%S"))  # one name on every rank

    name = Path(args.model).stem if args.model else Path(args.spec).parent.name if args.spec else DEFAULT_MODEL
    out = Path(args.out) if args.out is not None else Path("runs") / f"{name}-{stamp}"
    args.out = str(out)  # for the resume hint if interrupted
    trainer = train(spec, out, force=args.force, progress=False if args.quiet else None, log=_quiet_log(args),
                    init=args.init)
    return _report_training(trainer, out)


def _overrides(args) -> list[str]:
    """--set, and --track KIND as tracking.kind=KIND."""
    return [*args.overrides, *([f"tracking.kind={args.track}"] if args.track else [])]


def _tracking_destinations(overrides: Sequence[str]) -> dict:
    """``--resume RUN --set tracking.uri=URI``: the destinations the user gives again."""
    from .workflows.train import CONFIRMABLE
    found = {}
    for text in overrides:
        parts, value = parse_override(text)
        if ".".join(parts) in CONFIRMABLE:
            found[parts[-1]] = str(value)
    return found


def _extension(overrides: Sequence[str]):
    """The epochs of ``--resume RUN --set inference.schedule.epochs=N`` (None without --set);
    any other key but a tracking destination is refused: a resumed run keeps its spec."""
    from .workflows.train import CONFIRMABLE, EXTENDABLE
    epochs = None
    for text in overrides:
        parts, value = parse_override(text)
        if ".".join(parts) in CONFIRMABLE:
            continue
        if ".".join(parts) not in EXTENDABLE:
            raise_usage(f"--resume takes --set {EXTENDABLE[0]}=N only (to train a run longer), not --set {text}; "
                        "to change anything else, start a new run (--init RUN starts from its weights)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise_usage(f"--set {text}: expected a positive whole number of epochs")
        epochs = value
    return epochs


def _quiet_log(args):
    return (lambda text: None) if args.quiet else None


def _report_training(trainer, out: Path) -> int:
    from .workflows.train import saved_weights
    s = trainer.state
    epoch, elbo, which = saved_weights(trainer)
    _say(f"run: {out}")
    _say(f"saved weights: epoch {epoch} ({which}), validation ELBO {elbo:.3f} nats/example"
         + (f"; the best was {s.best_val:.3f} at epoch {s.best_epoch}" if s.best_epoch != epoch else "")
         + (" (stopped early)" if s.stopped_early else ""))
    _say(f"{s.epoch} epochs, {s.train_seconds:.1f} s of training on {trainer.device}; ELBOs in "
         + trainer.data.preprocessing.units(trainer.data.data_shape, trainer.vae.likelihood.density))
    _say(f"figures: {out / 'figures'}; next: pyro-vae evaluate {out}  |  pyro-vae analyze {out}")
    return 0


def cmd_sample(args) -> int:
    from .workflows.sample import sample_run
    samples = sample_run(args.run, args.n, args.seed, condition=args.condition)
    _say(f"samples: {samples.png} and {samples.npz} (z, mean)")
    return 0


def cmd_specs(args) -> int:
    for which, title in (("models", "Model specs"), ("inference", "Inference specs")):
        _say(f"{title} ({which}/; use the name with --{'model' if which == 'models' else 'inference'}):")
        for name, path in shipped(which).items():
            _say(f"  {name:<24} {spec_summary(path)}")
        _say("")
    names = {"network": "network (encoder, decoder, classifier)", "data": "data set"}
    slots = {names.get(slot, slot): registry for slot, registry in SLOTS.items()}
    _say("Registered kinds, per slot (kind = NAME, or an import path package.module:Name for your own class):")
    for slot, registry in slots.items():
        _say(f"  {slot}:")
        for info in registry.describe():
            _say(f"    {info.name:<22} {info.summary}")
            for p in info.parameters:
                default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
                _say(f"      {p.name} ({p.type}) = {default}")
    return 0


def cmd_evaluate(args) -> int:
    from .analysis.text import evaluation_lines
    from .workflows.evaluate import evaluate_run
    evaluation = evaluate_run(args.run, data=args.data, split=args.split, num_samples=args.samples,
                              limit=args.limit, seed=args.seed, device=args.device, refine=args.refine)
    for line in evaluation_lines(evaluation.summary):
        _say(line)
    _say(f"written: {evaluation.json_path} and {evaluation.npz_path}")
    return 0


def cmd_encode(args) -> int:
    from .workflows.encode import encode_run
    encoded = encode_run(args.run, args.out, data=args.data, split=args.split, samples=args.samples, seed=args.seed,
                         device=args.device, force=args.force, transform=args.transform)
    _say(f"encoded {encoded.examples} examples ({args.split}): {encoded.path}")
    return 0


def cmd_analyze(args) -> int:
    from .analysis.text import analysis_lines
    from .workflows.analyze import analyze_run
    result = analyze_run(args.run, data=args.data, split=args.split, num_samples=args.samples, limit=args.limit,
                         draws=args.draws, seed=args.seed, device=args.device, refine=args.refine)
    if result is None:  # another rank than 0: rank 0 reports
        return 0
    for line in analysis_lines(result.diagnostics):
        _say(line)
    _say(f"report: {result.report}")
    return 0


def cmd_compare(args) -> int:
    from .analysis.comparison_table import comparison_note, comparison_text
    from .workflows.compare import Design, EvaluationSettings, SNRSettings, compare
    _nonempty_out(args)
    try:
        snr_k = [int(k) for k in args.snr_k.split(",") if k.strip()]
    except ValueError:
        raise_usage(f"--snr-k {args.snr_k!r}: expected comma-separated whole numbers, e.g. 1,5,20")
    if any(k <= 0 for k in snr_k):
        raise_usage(f"--snr-k {args.snr_k!r}: K must be positive")
    design = Design(vary=args.vary, estimators=args.estimators, zip_axes=args.zip_axes, seeds=args.seeds,
                    reference=args.reference)
    comparison = compare(design, out=Path(args.out), model=args.model, inference=args.inference, data=args.data,
                         overrides=_overrides(args), force=args.force,
                         evaluation=EvaluationSettings(split=args.split, samples=args.samples, limit=args.limit),
                         snr=SNRSettings(repeats=args.snr_repeats, k=snr_k), progress=None, log=_say)
    _say("\n" + comparison_text(comparison.report))
    _say(comparison_note(comparison.report))
    _say(f"written: {comparison.table}, comparison.csv, comparison.json and comparison_*.png")
    return 0


class _Usage(Exception):
    pass


def raise_usage(message: str):
    raise _Usage(message)


# --- entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # denormals flushed before torch starts its threads, so that each of them flushes too
    with stops.command_scope(), trusting_code(getattr(args, "trust_code", False)), denormals_flushed():
        # a SIGTERM stops the command at once, and a repeated one cuts nothing short
        return _run_command(args)


def _run_command(args) -> int:
    try:
        distributed.init()  # under torchrun: join the ranks (nothing otherwise)
        return args.handler(args)
    except (_Usage, UserError) as exc:
        group = distributed.current()
        message = exc.for_command_line() if isinstance(exc, UserError) else str(exc)
        if not group.is_main and not isinstance(exc, distributed.SharedError):  # this rank's own problem
            print(f"pyro-vae {args.command} (rank {group.rank}): error: {one_line(message)}", file=sys.stderr, flush=True)
        _tell(f"pyro-vae {args.command}: error: {one_line(message)}")
        return EXIT_USAGE
    except TrainingDiverged as exc:
        _tell(f"pyro-vae {args.command}: {one_line(exc)}")
        return EXIT_DIVERGED
    except Interrupted as exc:
        where = getattr(args, "resume", None) or getattr(args, "out", None) or "RUN"
        launcher = "torchrun ... -m pyro_vae" if distributed.current().active else "pyro-vae"
        _tell(f"pyro-vae {args.command}: {exc}; checkpoint written. Resume with: {launcher} train --resume {one_line(where)}")
        return 128 + exc.signum
    except Stopped as exc:  # outside training: nothing to checkpoint
        _tell(f"pyro-vae {args.command}: {exc}")
        return 128 + exc.signum
    except KeyboardInterrupt:
        _tell(f"pyro-vae {args.command}: stopped")
        return 130
    except RuntimeError as exc:  # under torchrun: a collective failed because another rank died or hung
        group = distributed.current()
        if not group.active:
            raise
        where = getattr(args, "resume", None) or getattr(args, "out", None)
        hint = f"; the last checkpoint is intact: torchrun ... -m pyro_vae train --resume {where}" if where else ""
        print(f"pyro-vae {args.command} (rank {group.rank}): another process failed or stopped answering "
              f"({one_line(str(exc).splitlines()[0])[:200]}){hint}", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILED
    except BrokenPipeError:  # e.g. `pyro-vae specs | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
