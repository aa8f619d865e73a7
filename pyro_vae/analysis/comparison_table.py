"""``comparison.md``: a comparison's summary as a Markdown table, one row per cell, each
figure its mean over seeds +- its standard error, and each cell's paired difference to
the reference +- the paired standard error (see :mod:`pyro_vae.workflows.compare`)."""

from __future__ import annotations

import math


def _with_se(value, se, digits: int, signed: bool = False) -> str:
    """``value ± se`` (just the value when ``se`` is None), with a true minus sign; n/a when not finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    text = text.replace("-", "−")
    return text if se is None or not math.isfinite(se) else f"{text} ± {se:.{digits}f}"


def comparison_markdown(report: dict) -> str:
    settings, summary = report["settings"], report["summary"]
    reference, seeds = settings["reference"], settings["seeds"]
    axes = settings["axes"]
    over = "seeds" if seeds > 1 else "examples"
    columns = [("log p(x)", lambda s: _with_se(s["log_likelihood"], s["log_likelihood_se_seeds"], 2)),
               (f"Δ vs {reference}", lambda s: _with_se(s["diff_vs_reference"], s["diff_se"], 2, signed=True)),
               ("ELBO", lambda s: _with_se(s["elbo"], s["elbo_se_seeds"], 2)),
               ("KL", lambda s: _with_se(s["kl"], s["kl_se_seeds"], 2)),
               ("active units", lambda s: _with_se(s["active_units"], None, 1)),
               ("s/epoch", lambda s: _with_se(s["seconds_per_epoch"], None, 2))]
    if settings["snr"]:
        columns += [("SNR encoder", lambda s: _with_se(s["snr_encoder"], s["snr_encoder_se_seeds"], 3)),
                    ("SNR decoder", lambda s: _with_se(s["snr_decoder"], s["snr_decoder_se_seeds"], 3))]
    if any(math.isfinite(s["accuracy"]) for s in summary.values()):
        columns += [("accuracy", lambda s: _with_se(s["accuracy"], s["accuracy_se_seeds"], 3)),
                    ("NMI", lambda s: _with_se(s["nmi"], s["nmi_se_seeds"], 3))]
    names = [axis["name"] for axis in axes]
    header = ["cell", *names, *(name for name, _ in columns)]
    lines = [f"# Comparison: {', '.join(axis['path'] for axis in axes)}", "",
             f"Model `{settings['model']}`, inference `{settings['inference']}`, data `{settings['data']}`"
             + (f", with {', '.join(f'`{o}`' for o in settings['overrides'])}" if settings["overrides"] else "") + ".",
             f"Each cell trained with seeds 0..{seeds - 1}: the same data order and, for the parts the cells share, the "
             f"same initial weights per seed. Held-out log p(x) by importance sampling with K = {settings['samples']} on "
             f"the same {_examples(settings)} {settings['split']} examples for every cell.",
             f"Figures are means over {seeds} seed(s) ± their standard error over seeds"
             + (" (none with one seed)" if seeds == 1 else "") + f". Δ is the paired difference of log p(x) to "
             f"`{reference}` (same seed, same examples) ± its paired standard error over {over}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + len(names)) + ["---:"] * len(columns)) + "|"]
    for label, s in summary.items():
        values = report["cells"][label]
        cells = [f"`{label}`", *(str(values[axis["path"]]) for axis in axes)]
        cells += ["reference" if label == reference and name.startswith("Δ") else show(s) for name, show in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _examples(settings: dict) -> str:
    return f"{settings['examples']:,}" if settings.get("examples") is not None else "all"
