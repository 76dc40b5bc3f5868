"""Per-image evaluation values: what each part saves so the report can bootstrap over images.

Each part writes `<run>/eval/<part>/per_image.npz` beside its metrics.json (the folder DVC
tracks), with `index`: the test-split indices of its rows. Every method draws its images with
the same seeded `stage.subset`, so rows pair up across runs; the report checks the indices.

- calibration: `index`, `correct`, `top5`, `online_correct`, `confidence`, `nll`, `brier` [n];
  `shift_index` [m], `shift_correct`, `shift_confidence`, `shift_nll` [S, m] (one row per
  corruption set, `shift_set` [S] names them "name/severity").
- robustness: `index`, `eps` [E], `{fgsm,pgd}_correct` and `{fgsm,pgd}_confidence` [E, n].
- explanations: `index`, `avg_drop`, `increase`, `deletion_auc`, `insertion_auc`,
  `pointing_game`, `energy_pointing_game` [n] (NaN where undefined).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from excon import artifacts
from excon.evaluate import EVAL_DIR

FILE = "per_image.npz"


def save(out: Path, arrays: dict[str, np.ndarray | torch.Tensor]) -> None:
    """Write `arrays` (tensors moved to the host) as out/per_image.npz, atomically."""
    host = {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for k, v in arrays.items()
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **host)
    with artifacts.atomic_path(Path(out) / FILE) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def load(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """part -> its arrays, for the parts of `run_dir` that saved any (older runs did not)."""
    found = {}
    for path in sorted((Path(run_dir) / EVAL_DIR).glob(f"*/{FILE}")):
        with np.load(path, allow_pickle=False) as npz:
            found[path.parent.name] = {k: npz[k] for k in npz.files}
    return found


def top1_values(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image `correct` and `confidence` (top-1 probability) of [n, C] probabilities."""
    confidence, predicted = probs.float().max(dim=1)
    return {"correct": (predicted == labels).float(), "confidence": confidence}


def classifier_values(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image `correct`, `top5`, `confidence` (top-1 probability), `nll` and `brier` of
    [n, C] logits: the terms whose means (or, for ECE, binning) give the calibration metrics."""
    logits = logits.float()
    probs = logits.softmax(dim=1)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).float()
    return {
        **top1_values(probs, labels),
        "top5": (top == labels[:, None]).any(dim=1).float(),
        "nll": torch.nn.functional.cross_entropy(logits, labels, reduction="none"),
        "brier": (probs - onehot).pow(2).sum(dim=1),
    }


@dataclass(frozen=True)
class Statistic:
    """How one report metric is computed from per-image values of one part."""

    part: str
    index: np.ndarray  # test-split indices of the rows (pairing across runs)
    values: np.ndarray | None = None  # [n]: the metric is their (nan)mean
    confidence: np.ndarray | None = None  # [S, n] with `correct`: the metric is the mean ECE
    correct: np.ndarray | None = None
    n_bins: int = 10  # ECE's bins, as eval.n_bins was when the part ran


_EXPL = (
    "avg_drop",
    "increase",
    "deletion_auc",
    "insertion_auc",
    "pointing_game",
    "energy_pointing_game",
)
_MEANS = {  # report key -> (part, array): metrics that are per-image means
    "test/top1": ("calibration", "correct"),
    "test/top5": ("calibration", "top5"),
    "online/top1": ("calibration", "online_correct"),
    "calib/nll": ("calibration", "nll"),
    "calib/brier": ("calibration", "brier"),
    **{f"expl/{k}": ("explanations", k) for k in _EXPL},
}


def eps_name(eps: float) -> str:
    """The metrics' eps spelling: eps4, eps0.5 (as robustness._eps_name)."""
    return f"eps{int(eps)}" if float(eps).is_integer() else f"eps{eps:g}"


def statistic(key: str, parts: dict[str, dict[str, np.ndarray]]) -> Statistic | None:
    """How `key` is computed from a run's per-image values; None when they were not saved."""
    if key in _MEANS:
        part, name = _MEANS[key]
        arrays = parts.get(part, {})
        return Statistic(part, arrays["index"], values=arrays[name]) if name in arrays else None
    if key == "calib/ece" and "confidence" in parts.get("calibration", {}):
        c = parts["calibration"]
        return Statistic(
            "calibration",
            c["index"],
            confidence=c["confidence"],
            correct=c["correct"],
            n_bins=int(c["n_bins"]),
        )
    if key.startswith("shift/mean/") and "shift_correct" in parts.get("calibration", {}):
        return _shift(key.rsplit("/", 1)[1], parts["calibration"])
    m = re.fullmatch(r"adv/(fgsm|pgd)/(eps[\d.]+)/(acc|ece)", key)
    if m and "eps" in parts.get("robustness", {}):
        return _adversarial(*m.groups(), parts["robustness"])
    return None


def _shift(kind: str, c: dict[str, np.ndarray]) -> Statistic:
    # every corruption set holds the same images, so the mean over sets of a per-set mean is
    # the mean over images of each image's mean over sets; ECE stays per set
    if kind == "ece":
        return Statistic(
            "calibration",
            c["shift_index"],
            confidence=c["shift_confidence"],
            correct=c["shift_correct"],
            n_bins=int(c["n_bins"]),
        )
    name = {"acc": "shift_correct", "nll": "shift_nll"}[kind]
    return Statistic("calibration", c["shift_index"], values=c[name].mean(axis=0))


def _adversarial(attack: str, eps: str, kind: str, r: dict[str, np.ndarray]) -> Statistic | None:
    rows = [i for i, e in enumerate(r["eps"]) if eps_name(float(e)) == eps]
    if not rows or f"{attack}_correct" not in r:
        return None
    correct = r[f"{attack}_correct"][rows[0]]
    if kind == "acc":
        return Statistic("robustness", r["index"], values=correct)
    confidence = r[f"{attack}_confidence"][rows[0]]
    return Statistic("robustness", r["index"], None, confidence, correct, int(r["n_bins"]))
