"""The report's figures: per-epoch curves, selected and oracle values, the λ sweep's trade-off."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from mtrec.io.files import atomic_output
from mtrec.studies.report.stats import BEST_FIELDS, NAMES, GroupSummary, Stat, by_sharing

#: Per-epoch curves: metrics.json field -> (figure file, title, y label).
CURVES = {
    "train_watch": ("train_bpr.png", "Training BPR loss", "BPR loss  mean(1 − σ(p⁺ − p⁻))"),
    "train_rating": ("train_mse.png", "Training MSE", "rating MSE"),
    "train_loss": ("train_joint_loss.png", "Training joint loss", "λF·BPR + λR·MSE"),
    "test_mse": ("test_mse.png", "Test MSE", "rating MSE"),
    "test_mrr": ("test_mrr.png", "Test MRR", "MRR"),
}
SUMMARY_FIGURE = "selected_and_oracle.png"
TRADEOFF_FIGURE = "sweep_tradeoff.png"
FIGURES = (*(figure for figure, _, _ in CURVES.values()), SUMMARY_FIGURE, TRADEOFF_FIGURE)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    _pyplot().close(figure)


def curve_figure(groups: Sequence[GroupSummary], field: str, path: Path) -> None:
    """``field`` per epoch: the mean over seeds as a line, the min–max range as a band."""
    plt = _pyplot()
    _, title, ylabel = CURVES[field]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, group in enumerate(groups):
        values = group.curve(field)
        measured = ~np.isnan(values).any(axis=0)
        if not measured.any():
            continue
        epochs = np.arange(1, values.shape[1] + 1)[measured]
        values = values[:, measured]
        color = f"C{index}"
        # Distinct line styles keep identical curves (separate embeddings at any λ) visible.
        style = ("-", "--", "-.", ":")[index % 4]
        axes.plot(epochs, values.mean(axis=0), color=color, linestyle=style, label=group.configuration.label)
        axes.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2, linewidth=0)
    axes.set_title(f"{title} (mean over seeds, band: min–max)")
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)


def _error_bars(stats: Sequence[Stat]) -> np.ndarray:
    return np.array([[s.mean - s.low for s in stats], [s.high - s.mean for s in stats]])


def summary_figure(groups: Sequence[GroupSummary], path: Path) -> None:
    """Test MSE and MRR per configuration at the selected epoch and at the best test epoch (oracle),
    bars with min–max error bars.

    The y axis is cut to the range of the values: the differences are small next to the values.
    """
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(10, 4.2))
    positions = np.arange(len(groups))
    for axes, field in zip(panels, BEST_FIELDS):
        bounds = []
        for offset, (kind, label) in zip((-0.2, 0.2), (("selected", "selected epoch"), ("best", "best test epoch (oracle)"))):
            stats = [getattr(group, kind)(field) for group in groups]
            axes.bar(positions + offset, [s.mean for s in stats], 0.4, yerr=_error_bars(stats), capsize=4, label=label)
            bounds += [s.low for s in stats] + [s.high for s in stats]
        finite = [b for b in bounds if math.isfinite(b)]
        if finite:  # none where no run measured this metric (data without ratings has no MSE)
            low, high = min(finite), max(finite)
            margin = (high - low) * 0.3 or abs(high) * 0.05 or 1.0
            axes.set_ylim(low - margin, high + margin)
        axes.set_xticks(positions, [g.configuration.label.replace(", ", "\n", 1) for g in groups], fontsize=8)
        axes.set_ylabel(f"{NAMES[field]} (axis cut)")
        axes.set_title(f"{NAMES[field]} ({'lower' if BEST_FIELDS[field] else 'higher'} is better)")
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    figure.suptitle("Test metrics: mean over seeds, error bars min–max")
    _save(figure, path)


def tradeoff_figure(sweep: Sequence[GroupSummary], path: Path) -> None:
    """Test MSE against MRR, one point per λF and a line per sharing mode; selected and best test epoch (oracle).

    λF = 0 and λF = 1 are not drawn: each leaves one head untrained, far off the other points.
    """
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.8))
    both_trained = [g for g in sweep if 0 < g.configuration.factorization_weight < 1]
    for axes, (kind, when) in zip(panels, (("selected", "selected epoch"), ("best", "best test epoch (oracle)"))):
        for index, (name, groups) in enumerate(by_sharing(both_trained)):
            mse = [getattr(g, kind)("test_mse") for g in groups]
            mrr = [getattr(g, kind)("test_mrr") for g in groups]
            axes.errorbar(
                [s.mean for s in mse],
                [s.mean for s in mrr],
                xerr=_error_bars(mse),
                yerr=_error_bars(mrr),
                marker="o",
                capsize=3,
                color=f"C{index}",
                linestyle=("-", "--")[index],
                label=f"{name} embeddings",
            )
            for group, x, y in zip(groups, mse, mrr):
                label = f"{group.configuration.factorization_weight:g}"
                axes.annotate(label, (x.mean, y.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xlabel(f"test MSE at the {when} (lower is better)")
        axes.set_ylabel(f"test MRR at the {when} (higher is better)")
        axes.set_title(f"{when.capitalize()}")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("λ sweep: MSE–MRR trade-off (labels: λF = 1 − λR; bars: min–max; λF = 0, 1 not drawn)")
    _save(figure, path)
