"""Evaluation figures: robustness curves and ECE against corruption severity, per model and
overlaid across methods for the report; the report's headline small multiples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from excon.artifacts import atomic_path
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


@dataclass(frozen=True)
class MetricPanel:
    """One metric of the headline figure: method -> (value, low, high) (NaN bounds: no interval)."""

    title: str
    points: Mapping[str, tuple[float, float, float] | None]
    verdict: str = ""  # e.g. "excon vs supcon: better", shown under the title


@dataclass(frozen=True)
class Panel:
    """One claim: its title (with the run's verdict) and its metrics."""

    title: str
    metrics: Sequence[MetricPanel]


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}
CAPTION = (
    "points: mean over seeds; bars: 95 % interval (paired bootstrap over the test images, plus "
    "the seed-to-seed spread); each metric on its own scale"
)


def headline_plot(path: str | Path, panels: Sequence[Panel], max_columns: int = 8) -> None:
    """Small multiples: one row per claim, one axis per metric on its own scale, each method's
    value with its 95 % interval; the verdict is coloured under each metric's title."""
    columns = min(max_columns, max((len(p.metrics) for p in panels), default=1)) or 1
    rows = len(panels) or 1
    fig = plt.figure(figsize=(2.3 * columns, 2.7 * rows))
    grid = fig.add_gridspec(rows, columns, hspace=1.1, wspace=0.55)
    firsts = []
    for r, panel in enumerate(panels):
        axes = [fig.add_subplot(grid[r, c]) for c in range(max(1, len(panel.metrics[:columns])))]
        for ax, metric in zip(axes, panel.metrics[:columns], strict=False):
            _metric_axis(ax, metric)
        if not panel.metrics:
            axes[0].axis("off")
            axes[0].text(0, 0.5, "no data", fontsize=8)
        firsts.append(axes[0])
    fig.subplots_adjust(top=1 - 0.38 / rows, bottom=0.34 / rows, left=0.06, right=0.98)
    for ax, panel in zip(firsts, panels, strict=True):  # above its row, once axes have settled
        top = ax.get_position().y1 + 0.3 / (2.7 * rows)
        fig.text(0.01, top, panel.title, fontsize=10, weight="bold", va="bottom")
    fig.text(0.01, 0.003, CAPTION, fontsize=7, color="dimgray", va="bottom")
    with atomic_path(path) as tmp:  # not save_figure: tight_layout would undo the row titles' room
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _metric_axis(ax: plt.Axes, metric: MetricPanel) -> None:
    methods = [m for m, p in metric.points.items() if p is not None]
    for i, m in enumerate(methods):
        value, low, high = metric.points[m]
        bounds = math.isfinite(low) and math.isfinite(high)
        # ECE's resampled values sit above the full-data one (binning bias): the interval may
        # exclude the point, so each whisker is clipped at it
        err = [[max(value - low, 0)], [max(high - value, 0)]] if bounds else None
        ax.errorbar([i], [value], yerr=err, fmt="o", capsize=4, color=f"C{i}")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, fontsize=7)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(metric.title, fontsize=8)
    word = metric.verdict.rsplit(": ", 1)[-1]
    ax.text(
        0.5,
        -0.28,
        metric.verdict,
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=7,
        color=VERDICT_COLOURS.get(word, "dimgray"),
        weight="bold" if word in VERDICT_COLOURS else "normal",
    )
