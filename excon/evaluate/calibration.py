"""Calibration metrics: ECE (the authors' netcal binning), NLL, Brier, the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers, CI or pods
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from excon.artifacts import atomic_path

Bins = dict[str, torch.Tensor]


def _float(t: torch.Tensor) -> torch.Tensor:
    # at least float32: half-precision sums over a test set lose whole samples
    return t.to(torch.promote_types(t.dtype, torch.float32))


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> Bins:
    """Per-bin statistics of the top-1 confidence over `n_bins` equal-width bins on [0, 1].

    Bin i holds confidences in [i/n, (i+1)/n); the last bin also holds 1. These are the bins of
    netcal's ECE, which the authors' main_linear.py calls (scipy's binned_statistic_dd on
    np.linspace edges, compared in float64). Returns `lower`, `upper`, `confidence` and
    `accuracy` (means per bin, 0 for an empty bin) and `count` (int64), all [n_bins] on the
    input's device.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {probs.shape}, {labels.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = _float(probs.detach())
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).to(probs.dtype)
    edges = bin_edges(n_bins).to(probs.device)
    # right=True: inner[i-1] <= c < inner[i], lower-inclusive as netcal; 1 falls in the last bin.
    # In float64 on netcal's edges: float32 0.7 is below float64 0.7, and netcal bins it so.
    index = torch.bucketize(confidence.double(), edges[1:-1], right=True)
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device)
    count.index_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).index_add_(0, index, confidence)
    acc_sum = torch.zeros_like(count).index_add_(0, index, correct)
    safe = count.clamp_min(1)  # empty bins: sum 0 / 1 = 0
    return {
        "lower": edges[:-1].to(probs.dtype),
        "upper": edges[1:].to(probs.dtype),
        "confidence": conf_sum / safe,
        "accuracy": acc_sum / safe,
        "count": count.long(),
    }


def bin_edges(n_bins: int) -> torch.Tensor:
    """netcal's bin edges, float64: np.linspace(0, 1, n_bins + 1) (torch's linspace can differ
    in the last bit, which moves a confidence sitting on an edge)."""
    return torch.from_numpy(np.linspace(0.0, 1.0, n_bins + 1))


def ece_from_bins(bins: Bins) -> float:
    """Count-weighted mean |accuracy - confidence| over bins (L1 ECE); 0 for no samples."""
    count = bins["count"].to(bins["accuracy"].dtype)
    gap = (bins["accuracy"] - bins["confidence"]).abs()
    return float((count * gap).sum() / count.sum().clamp_min(1))


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error of the max softmax probability, `n_bins` equal-width bins."""
    return ece_from_bins(reliability_bins(probs, labels, n_bins))


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy (negative log-likelihood of the true class)."""
    return float(F.cross_entropy(_float(logits.detach()), labels))


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of sum over classes (p - onehot(label))^2; in [0, 2]."""
    probs = _float(probs.detach())
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float((probs - onehot).pow(2).sum(dim=1).mean())


def calibration_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 10
) -> dict[str, float]:
    """`acc`, `ece`, `nll` and `brier` of class logits [N, C] against labels [N]."""
    logits = _float(logits.detach())
    probs = logits.softmax(dim=1)
    return {
        "acc": float((probs.argmax(dim=1) == labels).float().mean()),
        "ece": ece(probs, labels, n_bins),
        "nll": nll(logits, labels),
        "brier": brier(probs, labels),
    }


def plot_reliability(bins: Bins, path: str | Path, title: str = "") -> None:
    """Reliability diagram: accuracy per bin against the diagonal, the gap to each bin's mean
    confidence shaded, and the sample count per bin underneath."""
    b = {k: v.detach().cpu().double().numpy() for k, v in bins.items()}
    lower, width = b["lower"], b["upper"] - b["lower"]
    centre = lower + width / 2
    filled = b["count"] > 0
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(4, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        lower,
        b["accuracy"],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    # gap bars run from accuracy to mean confidence; only for bins that hold samples
    gap = b["confidence"] - b["accuracy"]
    ax.bar(
        centre[filled],
        gap[filled],
        bottom=b["accuracy"][filled],
        width=width[filled] * 0.9,
        color="tab:red",
        alpha=0.35,
        hatch="//",
        edgecolor="tab:red",
        label="gap",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.text(
        0.97,
        0.03,
        f"ECE {100 * ece_from_bins(bins):.2f}%",
        ha="right",
        va="bottom",
        transform=ax.transAxes,
        fontsize=9,
    )
    if title:
        ax.set_title(title, fontsize=9)
    ax_n.bar(
        lower, b["count"], width=width, align="edge", color="gray", edgecolor="black", linewidth=0.5
    )
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("count")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
