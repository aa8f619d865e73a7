"""``comparison.md``: a comparison's summary as a Markdown table, one row per cell, each
figure its mean over seeds +- its standard error, and each cell's paired difference to
the reference +- the paired standard error (see :mod:`pyro_vae.workflows.compare`); and
the same summary as the plain-text table ``compare`` prints."""

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


def _aligned(rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows of cells as lines: each column as wide as its widest cell, the first ``left``
    columns flush left, the rest flush right, columns two spaces apart (never run together)."""
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if j < left else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def comparison_text(report: dict) -> str:
    """The terminal's table: per cell, log p(x), the paired difference to the reference with
    its standard errors over seeds and over examples, ELBO, KL, active units, ms per step
    (median over epochs and interquartile range), and SNR where measured; then, where a
    discrete latent y is learned, q(y|x)'s SNR, accuracy, cluster accuracy and NMI."""
    settings, summary = report["settings"], report["summary"]
    snr = settings["snr"]
    rows = [["cell", "log p(x)", f"diff vs {settings['reference']}", "SE seeds", "SE examples", "ELBO", "KL", "AU",
             "ms/step (IQR)", *(["SNR enc", "SNR dec"] if snr else [])]]
    for label, s in summary.items():
        low, high = (1000 * q for q in s["seconds_per_step_quartiles"])
        rows.append([label, f"{s['log_likelihood']:.3f}", f"{s['diff_vs_reference']:+.3f}",
                     f"{s['diff_se_seeds']:.3f}" if s["diff_se_seeds"] is not None else "n/a",
                     f"{s['diff_se_examples']:.3f}", f"{s['elbo']:.3f}", f"{s['kl']:.2f}", f"{s['active_units']:.0f}",
                     f"{1000 * s['seconds_per_step']:.2f} ({low:.2f}-{high:.2f})",
                     *([f"{s['snr_encoder']:.3f}", f"{s['snr_decoder']:.3f}"] if snr else [])])
    lines = _aligned(rows)
    discrete = [(label, s) for label, s in summary.items() if math.isfinite(s["accuracy"])]
    if discrete:  # a discrete latent y: q(y|x)'s gradient SNR and how q(y|x) agrees with the labels
        lines += [""] + _aligned([["cell", "SNR q(y|x)", "accuracy", "cluster acc", "NMI"]] + [
            [label, f"{s['snr_classifier']:.3f}", f"{s['accuracy']:.3f}", f"{s['cluster_accuracy']:.3f}", f"{s['nmi']:.3f}"]
            for label, s in discrete])
    return "\n".join(lines)


def comparison_note(report: dict) -> str:
    """The line under the printed table: what its figures are."""
    settings = report["settings"]
    seeds = settings["seeds"]
    return (f"(means over {seeds} seed(s); log p(x) with K = {settings['samples']} on "
            f"{settings['split']}; differences paired by example, with their standard error over seeds "
            f"(training's randomness{', the one to go by' if seeds > 1 else '; n/a with one seed'}) and over examples; "
            "ms/step: the median over epochs, and its interquartile range)")
