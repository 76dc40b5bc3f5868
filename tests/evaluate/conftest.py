"""Fake evaluated runs with per-image values, as `excon evaluate` writes them, for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from excon.evaluate import per_image
from excon.evaluate.uncertainty import weighted_ece
from excon.testing import write_eval_parts

EPS = (0.0, 4.0)


def _calibration(rng: np.random.Generator, acc: float, n: int, sets: int) -> dict:
    correct = (rng.uniform(size=n) < acc).astype(np.float32)
    confidence = np.clip(acc + rng.normal(0, 0.1, n), 0.05, 0.99).astype(np.float32)
    shift_correct = (rng.uniform(size=(sets, n)) < acc - 0.2).astype(np.float32)
    return {
        "index": np.arange(n),
        "n_bins": 10,
        "correct": correct,
        "top5": np.maximum(correct, rng.uniform(size=n) < 0.5).astype(np.float32),
        "online_correct": correct,
        "confidence": confidence,
        "nll": -np.log(np.where(correct > 0, confidence, (1 - confidence) / 9)),
        "brier": (1 - confidence) ** 2 + (1 - correct) / 2,
        "shift_index": np.arange(n),
        "shift_correct": shift_correct,
        "shift_confidence": np.clip(acc + rng.normal(0, 0.1, (sets, n)), 0.05, 1),
        "shift_nll": rng.gamma(2, 60, (sets, n)),
        "shift_set": np.array([f"noise/{s + 1}" for s in range(sets)]),
    }


def _robustness(rng: np.random.Generator, n: int) -> dict:
    """The same for every method (up to sampling): no robustness difference to find."""
    out = {"index": np.arange(n), "eps": np.array(EPS), "n_bins": 10}
    for attack, scale in (("fgsm", 1.0), ("pgd", 0.6)):
        rates = np.array([[max(0.7 - 0.1 * e, 0.05) * scale] for e in EPS])
        out[f"{attack}_correct"] = (rng.uniform(size=(len(EPS), n)) < rates).astype(np.float32)
        out[f"{attack}_confidence"] = np.clip(rng.normal(0.7, 0.15, (len(EPS), n)), 0.05, 1)
    return out


def _explanations(rng: np.random.Generator, drop: float, n: int) -> dict:
    out = {k: rng.uniform(size=n) for k in ("deletion_auc", "insertion_auc")}
    out["avg_drop"] = np.clip(rng.normal(drop, 0.1, n), 0, 1)
    out["increase"] = (rng.uniform(size=n) < 0.3).astype(float)
    out["pointing_game"] = np.where(np.arange(n) % 10 == 0, np.nan, rng.uniform(size=n) < 0.5)
    out["energy_pointing_game"] = rng.uniform(size=n)
    return {"index": np.arange(n), **out}


def _metrics(cal: dict, rob: dict, expl: dict) -> dict:
    """metrics.json as the parts compute them, from the same per-image values."""
    full = {n: np.ones((1, n), np.float32) for n in (len(cal["index"]), len(rob["index"]))}
    m = {
        "test/top1": cal["correct"].mean(),
        "test/top5": cal["top5"].mean(),
        "online/top1": cal["online_correct"].mean(),
        "calib/ece": weighted_ece(full[len(cal["index"])], cal["confidence"], cal["correct"])[0],
        "calib/nll": cal["nll"].mean(),
        "calib/brier": cal["brier"].mean(),
        "shift/mean/acc": cal["shift_correct"].mean(),
        "shift/mean/ece": weighted_ece(
            full[len(cal["index"])], cal["shift_confidence"], cal["shift_correct"]
        )[0],
        "shift/mean/nll": cal["shift_nll"].mean(),
    }
    for attack in ("fgsm", "pgd"):
        for i, eps in enumerate(rob["eps"]):
            key = f"adv/{attack}/{per_image.eps_name(eps)}"
            correct, conf = rob[f"{attack}_correct"][i], rob[f"{attack}_confidence"][i]
            m[f"{key}/acc"] = correct.mean()
            m[f"{key}/ece"] = weighted_ece(full[len(rob["index"])], conf, correct)[0]
    m |= {f"expl/{k}": np.nanmean(v) for k, v in expl.items() if k != "index"}
    return {k: float(v) for k, v in m.items()}


def make_run_with_values(
    root: Path, method: str, seed: int, acc: float, drop: float = 0.5, n: int = 300
) -> Path:
    """A run dir `<root>/<method>/seed<seed>` with per_image.npz in every part and metrics.json
    computed from them; `acc` sets clean accuracy, `drop` the average drop."""
    rng = np.random.default_rng([len(method), seed, int(1000 * acc)])
    run = Path(root) / method / f"seed{seed}"
    cal, rob = _calibration(rng, acc, n, 3), _robustness(rng, n // 2)
    expl = _explanations(rng, drop, n // 2)
    for part, arrays in (("calibration", cal), ("robustness", rob), ("explanations", expl)):
        per_image.save(run / "eval" / part, arrays)
    row = {"method": method, "seed": seed, "dataset": "toy", **_metrics(cal, rob, expl)}
    write_eval_parts(run, row)
    return run


@pytest.fixture
def run_with_values():
    """`make_run_with_values` (a fixture: tests/ is no package to import helpers from)."""
    return make_run_with_values
