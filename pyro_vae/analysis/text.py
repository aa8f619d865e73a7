"""Results in words, as the commands print them: active units, an evaluation's summary and
an analysis's diagnostics."""

from __future__ import annotations

from .inference_data import khat_advice


def describe_active_units(summary: dict) -> str:
    """'5 of 16' (with several layers '5 of 24: z1 4 of 16, z2 1 of 8'), or why there is no count."""
    if summary["active_units"] is None:
        return "n/a (a posterior without a closed-form mean needs at least 2 draws)"
    text = f"{summary['active_units']} of {summary['latent_dim']}"
    per_layer, dims = summary.get("active_units_per_layer"), summary.get("layer_dims") or []
    if per_layer and len(dims) > 1:
        text += ": " + ", ".join(f"z{i + 1} {a} of {d}" for i, (a, d) in enumerate(zip(per_layer, dims)))
    return text


def evaluation_lines(summary: dict) -> list[str]:
    """An evaluation's summary (``RUN/evaluation/<split>.json``) as the lines ``evaluate``
    prints: log p(x) and the ELBO +- their standard errors, its terms, active units and,
    for a discrete latent on labelled examples, the classification scores."""
    rows = [
        ("log p(x)", f"{summary['log_likelihood']:.3f} +- {summary['log_likelihood_se']:.3f}"),
        ("ELBO", f"{summary['elbo']:.3f} +- {summary['elbo_se']:.3f}"),
        ("reconstruction", f"{summary['reconstruction']:.3f}"),
        ("KL", f"{summary['kl']:.3f}"),
        ("active units", describe_active_units(summary)),
    ]
    if "accuracy" in summary:  # a discrete latent, on labelled examples
        rows += [("accuracy", f"{summary['accuracy']:.1%} (argmax q(y|x) read as the label)"),
                 ("clustering", f"{summary['cluster_accuracy']:.1%} accuracy under the best one-to-one matching of clusters to labels"),
                 ("NMI", f"{summary['nmi']:.3f}")]
    return [f"{'split':<16}{summary['split']} ({summary['n']} examples, K = {summary['samples']} samples each "
            f"from {proposal_words(summary.get('refine', 0))})",
            *(f"{name:<16}{value}" for name, value in rows),
            f"({summary['units']}; +- one standard error over examples; {summary['seconds']:.1f} s on {summary['device']})"]


def proposal_words(refine: int) -> str:
    """The importance proposal, in words: the encoder's q(z|x), or q refined per example."""
    return "q(z|x)" if not refine else f"q(z|x) refined per example by {refine} steps on its own ELBO"


def analysis_lines(diagnostics: dict) -> list[str]:
    """An analysis's diagnostics (``RUN/analysis/diagnostics.json``) as the lines ``analyze``
    prints: IS and PSIS log p(x), the shares of the k-hat bands and what they advise."""
    d, bands = diagnostics, diagnostics["khat_bands"]
    return [f"{d['n']} examples of {d['split']}, {d['samples']} draws each from {proposal_words(d.get('refine', 0))}",
            f"log p(x): IS {d['is_log_likelihood']['mean']:.3f} +- {d['is_log_likelihood']['se']:.3f}, "
            f"PSIS {d['psis_log_likelihood']['mean']:.3f} +- {d['psis_log_likelihood']['se']:.3f} ({d['units']})",
            f"k-hat: good (<0.5) {bands['good']['share']:.1%}, usable (0.5-0.7) {bands['ok']['share']:.1%}, "
            f"unreliable (>=0.7) {bands['bad']['share']:.1%}",
            khat_advice(bands)]
