"""Figures of a comparison (see pyro_vae.workflows.compare): log p(x) and the paired
differences per cell, learning curves, and gradient SNR where it was measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import epoch_ticks, new_figure, robust_limits, save_figure, ticker


def plain_numbers(axis) -> None:
    """Log-axis ticks as plain numbers (20, 0.5), not powers of ten (2x10^1)."""
    def minor(value, _):  # within a decade every tick is labelled, over several only the 2s and 5s
        low, high = sorted(axis.get_view_interval())
        return f"{value:.3g}" if high < 10 * max(low, 1e-300) or f"{value:.1g}"[0] in "25" else ""

    axis.set_major_formatter(ticker().FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(ticker().FuncFormatter(minor))


def _log_axes(ax, xlabel: str, ylabel: str, title: str, x_log: bool) -> None:
    if x_log:
        ax.set_xscale("log")
        plain_numbers(ax.xaxis)
    else:
        ax.xaxis.set_major_locator(ticker().MaxNLocator(integer=True))
    ax.set_yscale("log")
    plain_numbers(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _by_cell(rows, labels, key):
    return [np.array([r[key] for r in rows if r["cell"] == label], dtype=float) for label in labels]


def comparison_figures(out: Path, report: dict) -> list[Path]:
    labels = report["settings"]["cells"]
    reference = report["settings"]["reference"]
    rows = report["rows"]
    settings = report["settings"]
    paths = []

    # held-out log-likelihood per seed, and the paired difference to the reference
    fig = new_figure(figsize=(9.5, 4.2))
    left, right = fig.subplots(1, 2)
    positions = np.arange(len(labels))
    for i, values in enumerate(_by_cell(rows, labels, "log_likelihood")):
        left.scatter(np.full(len(values), i), values, color="0.6", s=14, zorder=2, label="one seed" if i == 0 else None)
        se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
        left.errorbar(i, values.mean(), yerr=se, fmt="o", color="C0", capsize=4, zorder=3, label="mean +- SE over seeds" if i == 0 else None)
    left.set_xticks(positions, labels, rotation=20, ha="right")
    left.set_ylabel("held-out log p(x) (nats per example)")
    left.set_title(f"Importance-sampled log-likelihood\n(K = {settings['samples']})")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    diffs = _by_cell(rows, labels, "diff_vs_reference")
    ses = _by_cell(rows, labels, "diff_se")
    for i, (d, se) in enumerate(zip(diffs, ses)):
        for j, (value, err) in enumerate(zip(d, se)):
            right.errorbar(i + (j - (len(d) - 1) / 2) * 0.12, value, yerr=err, fmt="o", ms=4, capsize=3, color=f"C{j}",
                           label=f"seed {j}" if i == 0 else None)
    right.axhline(0, color="k", lw=0.8)
    right.set_xticks(positions, labels, rotation=20, ha="right")
    right.set_ylabel("difference in log p(x) (nats per example)")
    right.set_title(f"Paired difference to {reference}\n(+- paired SE over examples)")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "comparison_loglik.png"))

    # learning curves with a band over seeds
    fig = new_figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    means = []
    for i, label in enumerate(labels):
        curves = [c["val_elbo"] for c in report["learning_curves"] if c["cell"] == label]
        length = min(len(c) for c in curves)
        values = np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        mean = values.mean(0)
        means.append(mean)
        ax.plot(epochs, mean, color=f"C{i}", label=label, marker="." if length <= 50 else None)
        if len(values) > 1:
            se = values.std(0, ddof=1) / np.sqrt(len(values))
            if length > 1:
                ax.fill_between(epochs, mean - se, mean + se, color=f"C{i}", alpha=0.25, lw=0)
            else:  # one epoch: a band has no width
                ax.errorbar(epochs + 0.04 * (i - (len(labels) - 1) / 2), mean, yerr=se, color=f"C{i}", capsize=4)
    robust_limits(ax, means)
    epoch_ticks(ax, max(len(m) for m in means))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats per example)")
    ax.set_title(f"Learning curves: mean over {settings['seeds']} seed(s), band +- SE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "comparison_curves.png"))

    # gradient SNR during training, and against K, where they were measured
    if not report["snr_points"]:
        return paths
    has_k = bool(report["snr_vs_k"])
    fig = new_figure(figsize=(9.5, 4.0 * (2 if has_k else 1)))
    axes = fig.subplots(2 if has_k else 1, 2, squeeze=False)
    for col, group in enumerate(("encoder", "decoder")):
        ax = axes[0, col]
        for i, label in enumerate(labels):
            series = [p["points"] for p in report["snr_points"] if p["cell"] == label]
            epochs = [pt["epoch"] for pt in series[0]]
            values = np.array([[pt.get(f"snr_{group}", np.nan) for pt in s] for s in series])
            ax.plot(epochs, values.mean(0), marker="o", color=f"C{i}", label=label)
        _log_axes(ax, "epoch (0 = before training)", "gradient SNR, mean |E g| / std g",
                  f"{group} gradients, {settings['snr_repeats']} estimates of one batch", x_log=False)
        if has_k:
            ax = axes[1, col]
            estimators = list(dict.fromkeys(r["estimator"] for r in report["snr_vs_k"]))
            for i, label in enumerate(estimators):  # the same colour as its cell above when cells are estimators
                mine = [r for r in report["snr_vs_k"] if r["estimator"] == label]
                color = f"C{labels.index(label)}" if label in labels else f"C{i}"
                ax.plot([r["k"] for r in mine], [r[f"snr_{group}"] for r in mine], marker="o", color=color, label=label)
            _log_axes(ax, "K (samples per example)", "gradient SNR",
                      f"{group} SNR against K, at the trained\nweights of {reference} (seed 0)", x_log=True)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "comparison_snr.png"))
    return paths
