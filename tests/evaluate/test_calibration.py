"""Calibration metrics against hand-computed tables and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from excon.evaluate.calibration import (
    brier,
    calibration_metrics,
    ece,
    ece_from_bins,
    nll,
    plot_reliability,
    reliability_bins,
)


def _rows(conf_and_correct: list[tuple[float, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class probs [c, 1-c] (c >= 0.5, so class 0 is predicted) and labels that make each
    prediction right or wrong as asked."""
    probs = torch.tensor([[c, 1 - c] for c, _ in conf_and_correct])
    labels = torch.tensor([0 if ok else 1 for _, ok in conf_and_correct])
    return probs, labels


def test_perfectly_calibrated_predictor_has_zero_ece():
    # each bin's accuracy equals its confidence exactly: 3/4 right at 0.75, 11/20 at 0.55,
    # 2/2 at 1.0 (1.0 sits in the last bin, closed on the right as netcal's)
    rows = [(0.75, i < 3) for i in range(4)] + [(0.55, i < 11) for i in range(20)]
    rows += [(1.0, True)] * 2
    probs, labels = _rows(rows)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-6)
    bins = reliability_bins(probs, labels)
    assert bins["count"].tolist() == [0, 0, 0, 0, 0, 20, 0, 4, 0, 2]
    assert bins["accuracy"][[5, 7, 9]].tolist() == pytest.approx([0.55, 0.75, 1.0])


def test_hand_computed_ece_table():
    probs = torch.tensor(
        [
            [0.85, 0.10, 0.05],  # label 0: right, bin 8
            [0.90, 0.05, 0.05],  # label 1: wrong, bin 8
            [0.20, 0.60, 0.20],  # label 1: right, bin 6 (float32 0.6 is above 0.6)
            [0.45, 0.30, 0.25],  # label 2: wrong, bin 4
            [0.35, 0.33, 0.32],  # label 0: right, bin 3 (float32 0.35 is below 0.35)
        ]
    )
    labels = torch.tensor([0, 1, 1, 2, 0])
    bins = reliability_bins(probs, labels)
    assert bins["count"].tolist() == [0, 0, 0, 1, 1, 0, 1, 0, 2, 0]
    assert bins["confidence"].tolist() == pytest.approx([0, 0, 0, 0.35, 0.45, 0, 0.6, 0, 0.875, 0])
    assert bins["accuracy"].tolist() == pytest.approx([0, 0, 0, 1, 0, 0, 1, 0, 0.5, 0])
    assert bins["lower"].tolist() == pytest.approx([i / 10 for i in range(10)])
    assert bins["upper"].tolist() == pytest.approx([(i + 1) / 10 for i in range(10)])
    # bin 8 pools its two samples: |0.5 - 0.875| = 0.375, not the mean of per-sample gaps
    expected = (2 * 0.375 + 0.65 + 0.45 + 0.4) / 5
    assert ece(probs, labels) == pytest.approx(expected, abs=1e-6)
    assert ece_from_bins(bins) == ece(probs, labels)


@pytest.mark.parametrize("on_edges", [True, False])
def test_ece_equals_netcals_binning(on_edges):
    """The authors score ECE with netcal, which bins with scipy's binned_statistic_dd on
    np.linspace edges: [lower, upper), 1 in the last bin. Here on confidences sitting exactly
    on the edges (float64, where the two conventions part) and on random ones (float32)."""
    from scipy.stats import binned_statistic_dd

    g = torch.Generator().manual_seed(3)
    if on_edges:
        conf = torch.from_numpy(np.linspace(0.0, 1.0, 11)[4:]).repeat(3)  # 0.4 .. 1.0, float64
        probs = torch.stack([conf, (1 - conf) / 2, (1 - conf) / 2], dim=1)
    else:
        probs = (torch.randn(300, 4, generator=g) * 2).softmax(dim=1)
    labels = torch.randint(0, probs.shape[1], (len(probs),), generator=g)
    x = probs.max(1).values.numpy().astype(np.float64)[:, None]
    matched = (probs.argmax(1) == labels).numpy()
    edges = [np.linspace(0.0, 1.0, 11)]
    acc = np.nan_to_num(binned_statistic_dd(x, matched, "mean", bins=edges)[0])
    conf_mean = np.nan_to_num(binned_statistic_dd(x, x[:, 0], "mean", bins=edges)[0])
    counts = np.histogramdd(x, bins=edges)[0]
    expected = float(np.sum(np.abs(acc - conf_mean) * counts / len(x)))
    assert reliability_bins(probs, labels)["count"].tolist() == counts.astype(int).tolist()
    assert ece(probs, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("seed", "n_bins", "classes"), [(0, 10, 5), (1, 10, 3), (2, 15, 10)])
def test_ece_matches_torchmetrics(seed, n_bins, classes):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(400, classes, generator=g) * 2).softmax(dim=1)
    labels = torch.randint(0, classes, (400,), generator=g)
    metric = MulticlassCalibrationError(num_classes=classes, n_bins=n_bins, norm="l1")
    expected = float(metric(probs, labels))
    assert expected > 0.01  # a non-trivial comparison
    assert ece(probs, labels, n_bins) == pytest.approx(expected, abs=1e-6)


def test_nll_hand_cases():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # probs [.5 .5], [.75 .25]
    labels = torch.tensor([0, 1])
    assert nll(logits, labels) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert nll(torch.tensor([[100.0, 0.0]]), torch.tensor([0])) == pytest.approx(0, abs=1e-6)


def test_brier_hand_cases():
    probs = torch.tensor([[0.75, 0.25, 0.0], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 2])
    # (0.0625 + 0.0625 + 0) and (0.04 + 0.25 + 0.49)
    assert brier(probs, labels) == pytest.approx((0.125 + 0.78) / 2, rel=1e-6)
    assert brier(torch.eye(3), torch.arange(3)) == 0.0
    assert brier(torch.eye(3), torch.tensor([1, 2, 0])) == pytest.approx(2.0)


def test_calibration_metrics_from_logits():
    probs = torch.tensor([[0.75, 0.25, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 2, 2])
    logits = probs.clamp_min(1e-12).log() + 3.0  # softmax is shift-invariant
    m = calibration_metrics(logits, labels)
    assert set(m) == {"acc", "ece", "nll", "brier"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["nll"] == pytest.approx(
        -(math.log(0.75) + math.log(0.3) + math.log(0.8)) / 3, rel=1e-5
    )
    assert m["brier"] == pytest.approx(brier(probs, labels), abs=1e-6)
    # bins 7 (0.75 right, 0.8 right) -> |1 - 0.775|, bin 5 (0.5 wrong) -> 0.5
    assert m["ece"] == pytest.approx((2 * 0.225 + 0.5) / 3, abs=1e-6)


def test_half_precision_inputs_are_accumulated_in_float32():
    probs, labels = _rows([(0.75, i % 4 != 0) for i in range(4000)])
    assert ece(probs.half(), labels) == pytest.approx(0.0, abs=1e-3)
    assert reliability_bins(probs.half(), labels)["count"].sum() == 4000


def test_reliability_plot_writes_png(tmp_path):
    probs, labels = _rows([(0.95, True), (0.9, False), (0.6, True), (0.55, False)])
    out = tmp_path / "plots" / "reliability.png"
    plot_reliability(reliability_bins(probs, labels), out, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 2000
    assert [p.name for p in out.parent.iterdir()] == ["reliability.png"]  # no temp left behind
