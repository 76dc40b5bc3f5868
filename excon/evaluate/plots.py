"""Evaluation figures: robustness curves and ECE against corruption severity, per model and
overlaid across methods for the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from excon.plots import plt, save_figure

Series = Mapping[str, Sequence[tuple[float, float]]]  # label -> [(x, y), ...]


def line_plot(path: str | Path, series: Series, xlabel: str, ylabel: str, title: str = "") -> None:
    """One line per label; x values need not be shared."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)


def bar_plot(path: str | Path, values: Mapping[str, Mapping[str, float]], title: str = "") -> None:
    """Grouped bars: one group per metric, one bar per method (values[method][metric])."""
    methods = list(values)
    metrics = sorted({m for v in values.values() for m in v})
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(metrics) * max(1, len(methods)) / 2), 3.5))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [values[method].get(m, float("nan")) for m in metrics], width, label=method)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
