"""Per-image values reproduce the parts' metrics, survive the disk, and resolve per report key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from excon.evaluate import per_image
from excon.evaluate.calibration import calibration_metrics
from excon.evaluate.uncertainty import weighted_ece, weighted_mean
from excon.probe import topk_accuracy


def _logits(n: int = 64, classes: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 3, torch.randint(0, classes, (n,), generator=g)


def test_classifier_values_average_to_the_calibration_metrics():
    logits, labels = _logits()
    values = {k: v.numpy() for k, v in per_image.classifier_values(logits, labels).items()}
    ref = calibration_metrics(logits, labels, 10)
    assert values["correct"].mean() == pytest.approx(ref["acc"])
    assert values["nll"].mean() == pytest.approx(ref["nll"], rel=1e-5)
    assert values["brier"].mean() == pytest.approx(ref["brier"], rel=1e-5)
    assert values["top5"].mean() == pytest.approx(topk_accuracy(logits, labels, 5))
    full = np.ones((1, len(labels)), np.float32)
    ece = weighted_ece(full, values["confidence"], values["correct"], 10)[0]
    assert ece == pytest.approx(ref["ece"], abs=1e-6)


def test_save_and_load_round_trip_per_part(tmp_path):
    run = tmp_path / "run"
    per_image.save(run / "eval" / "robustness", {"index": np.arange(3), "eps": torch.tensor([4.0])})
    per_image.save(run / "eval" / "explanations", {"index": np.arange(2), "avg_drop": [0.1, 0.2]})
    loaded = per_image.load(run)
    assert set(loaded) == {"robustness", "explanations"}
    assert loaded["robustness"]["eps"].tolist() == [4.0]
    assert loaded["explanations"]["avg_drop"].tolist() == [0.1, 0.2]
    assert per_image.load(tmp_path / "older-run") == {}


def _parts() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "calibration": {
            "index": np.arange(5),
            "n_bins": np.array(15),
            "correct": np.array([1, 0, 1, 1, 0.0]),
            "confidence": rng.uniform(size=5),
            "shift_index": np.arange(5),
            "shift_correct": np.array([[1, 0, 1, 1, 0.0], [0, 0, 1, 0, 0.0]]),
            "shift_confidence": rng.uniform(size=(2, 5)),
            "shift_nll": np.array([[1, 2, 3, 4, 5.0], [5, 4, 3, 2, 1.0]]),
        },
        "robustness": {
            "index": np.array([0, 2]),
            "eps": np.array([0.5, 4.0]),
            "n_bins": np.array(10),
            "fgsm_correct": np.array([[1, 1.0], [0, 1.0]]),
            "fgsm_confidence": np.array([[0.9, 0.8], [0.7, 0.6]]),
        },
        "explanations": {"index": np.array([1, 3]), "pointing_game": np.array([1.0, np.nan])},
    }


def test_statistic_resolves_each_kind_of_key():
    parts = _parts()
    top1 = per_image.statistic("test/top1", parts)
    assert top1.part == "calibration" and top1.values.tolist() == [1, 0, 1, 1, 0]
    ece = per_image.statistic("calib/ece", parts)
    assert ece.values is None and ece.n_bins == 15 and ece.confidence.shape == (5,)
    # corruption sets hold the same images: acc and NLL are per-image means over the sets
    shift_acc = per_image.statistic("shift/mean/acc", parts)
    assert shift_acc.values.mean() == pytest.approx(parts["calibration"]["shift_correct"].mean())
    assert per_image.statistic("shift/mean/nll", parts).values.tolist() == [3.0] * 5
    assert per_image.statistic("shift/mean/ece", parts).confidence.shape == (2, 5)
    fgsm = per_image.statistic("adv/fgsm/eps4/acc", parts)
    assert fgsm.values.tolist() == [0, 1] and fgsm.index.tolist() == [0, 2]
    assert per_image.statistic("adv/fgsm/eps0.5/ece", parts).confidence.tolist() == [0.9, 0.8]
    pg = per_image.statistic("expl/pointing_game", parts)
    assert weighted_mean(np.ones((1, 2), np.float32), pg.values)[0] == 1.0  # NaN skipped


def test_keys_without_saved_values_have_no_statistic():
    parts = _parts()
    assert per_image.statistic("adv/pgd/eps4/acc", parts) is None  # PGD not saved here
    assert per_image.statistic("adv/fgsm/eps8/acc", parts) is None  # no such eps
    assert per_image.statistic("expl/avg_drop", parts) is None
    assert per_image.statistic("test/top1", {}) is None
    assert per_image.statistic("train/loss", parts) is None
