"""The report's metrics grouped by the paper's four claims, their intervals, and each claim's
verdict for this run.

The paper (ExCon, Zhang et al.) claims that ExCon beats SupCon on (1) accuracy, (2) calibration
under shift, measured as ECE on FGSM-perturbed test images at each eps, (3) adversarial
robustness (FGSM accuracy) and (4) explanation quality (Average Drop, Increase in Confidence).
A claim is *supported* when ExCon - SupCon is better on at least one of the claim's metrics and
worse on none, *contradicted* when worse on one and better on none, *mixed* when both, *not
shown* when every difference is within noise and *not tested* without both methods' per-image
values. PGD, clean calibration and corruption shift are shown beside them as extensions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from excon.evaluate import uncertainty
from excon.evaluate.per_image import Statistic, statistic

CLAIM_PAIR = ("excon", "supcon")  # the paper's comparison: ExCon against SupCon
SUPPORTED, CONTRADICTED, MIXED, NOT_SHOWN, NOT_TESTED = (
    "supported",
    "contradicted",
    "mixed",
    "not shown (within noise)",
    "not tested",
)


@dataclass(frozen=True)
class Row:
    """One metric of the report: its key, title, direction (+1: higher is better), section."""

    key: str
    title: str
    direction: int
    section: str
    upper: float = 1.0  # the metric's range is [0, upper]: rates, ECE, drop, AUCs are in [0, 1]


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    section: str  # its metrics' section (the headline figure's panel)
    primary: str  # regex of the keys the verdict rests on


CLAIMS = (
    Claim("accuracy", "accuracy", "accuracy", r"test/top1"),
    Claim(
        "calibration",
        "calibration under shift (FGSM ECE)",
        "calibration",
        r"adv/fgsm/eps(?!0/)[\d.]+/ece",
    ),
    Claim(
        "robustness",
        "adversarial robustness (FGSM accuracy)",
        "robustness",
        r"adv/fgsm/eps(?!0/)[\d.]+/acc",
    ),
    Claim(
        "explanations",
        "explanation quality (Average Drop, Increase)",
        "explanations",
        r"expl/(avg_drop|increase)",
    ),
)
SECTIONS = {
    "accuracy": "Accuracy (paper's claim)",
    "calibration": "Calibration under shift: FGSM ECE (paper's claim), PGD beside it",
    "robustness": "Adversarial robustness: FGSM (paper's claim), PGD beside it",
    "explanations": "Explanation quality: drop/increase (paper's claim), the rest beside it",
    "clean": "Clean calibration",
    "corruption": "Calibration under corruption shift (extension)",
}
_STATIC = [  # Row fields; adversarial rows come from the data's eps
    ("test/top1", "top-1", +1, "accuracy"),  # of the scored classifier (eval.head)
    ("test/top5", "top-5", +1, "accuracy"),
    ("online/top1", "online head top-1, last epoch", +1, "accuracy"),
    # the reference protocol only: the authors' figure, chosen on the test set it is scored on
    ("online/top1_best_epoch", "online head top-1, best epoch (selected on test)", +1, "accuracy"),
    ("expl/avg_drop", "avg drop", -1, "explanations"),
    ("expl/increase", "increase", +1, "explanations"),
    ("expl/deletion_auc", "deletion AUC", -1, "explanations"),
    ("expl/insertion_auc", "insertion AUC", +1, "explanations"),
    ("expl/pointing_game", "pointing game", +1, "explanations"),
    ("expl/energy_pointing_game", "energy PG", +1, "explanations"),
    ("calib/ece", "ECE", -1, "clean"),
    ("calib/nll", "NLL", -1, "clean", math.inf),
    ("calib/brier", "Brier", -1, "clean", 2.0),
    ("shift/mean/acc", "corruption acc", +1, "corruption"),
    ("shift/mean/ece", "corruption ECE", -1, "corruption"),
    ("shift/mean/nll", "corruption NLL", -1, "corruption", math.inf),
]
_ADV = re.compile(r"adv/(fgsm|pgd)/eps([\d.]+)/(acc|ece)")


def rows_for(keys: set[str]) -> list[Row]:
    """The report's rows for the metrics present, in section order; FGSM beside PGD per eps."""
    adv = sorted(
        (float(m.group(2)), m.group(3), m.group(1), key)
        for key in keys
        if (m := _ADV.fullmatch(key))
    )
    rows = [Row(*fields) for fields in _STATIC if fields[0] in keys]
    for eps, kind, attack, key in adv:
        section = "calibration" if kind == "ece" else "robustness"
        title = f"{attack.upper()}-{eps:g} {'ECE' if kind == 'ece' else 'acc'}"
        rows.append(Row(key, title, -1 if kind == "ece" else +1, section))
    order = list(SECTIONS)
    return sorted(rows, key=lambda r: order.index(r.section))  # stable: order kept in a section


@dataclass
class Intervals:
    """Per metric: each method's estimate and each pair's comparison (a - b)."""

    estimates: dict[str, dict[str, uncertainty.Estimate]] = field(default_factory=dict)
    comparisons: dict[tuple[str, str], dict[str, uncertainty.Comparison]] = field(
        default_factory=dict
    )
    seeds: dict[str, int] = field(default_factory=dict)  # method -> seeds with per-image values


def pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) for a - b: later methods (ExCon) against earlier (SupCon, CE), ExCon-SupCon first."""
    n = len(methods)
    return [(methods[j], methods[i]) for j in reversed(range(n)) for i in reversed(range(j))]


def intervals(
    methods: Sequence[str],
    runs: Sequence[tuple[str, dict[str, dict[str, np.ndarray]]]],
    rows: Sequence[Row],
    n_resamples: int = uncertainty.N_RESAMPLES,
) -> Intervals:
    """Bootstrap every row over the runs' per-image values (method, parts) and compare methods."""
    out = Intervals()
    weights: dict[int, np.ndarray] = {}  # one resample matrix per image count, shared by runs
    for row in rows:
        groups = _seed_runs(row.key, runs, weights, n_resamples)
        if not groups:
            continue
        variance, dof = uncertainty.pooled_seed_variance(list(groups.values()))
        out.estimates[row.key] = {
            m: _clipped(uncertainty.estimate(g, variance, dof), row.upper)
            for m, g in groups.items()
        }
        for a, b in pairs([m for m in methods if m in groups]):
            cmp = uncertainty.compare(groups[a], groups[b], row.direction, variance, dof)
            low, high = max(cmp.low, -row.upper), min(cmp.high, row.upper)  # a difference's range
            cmp = uncertainty.Comparison(cmp.diff, low, high, cmp.verdict)
            out.comparisons.setdefault((a, b), {})[row.key] = cmp
        for m, g in groups.items():
            out.seeds[m] = max(out.seeds.get(m, 0), g.seeds)
    return out


def _clipped(est: uncertainty.Estimate, upper: float) -> uncertainty.Estimate:
    # the seed term's t tails run past what the metric can be (a top-1 of 1.05): cut at its range
    low, high = max(est.low, 0.0), min(est.high, upper)
    return uncertainty.Estimate(est.value, low, high, est.seeds)


def _seed_runs(
    key: str,
    runs: Sequence[tuple[str, dict[str, dict[str, np.ndarray]]]],
    weights: dict[int, np.ndarray],
    n_resamples: int,
) -> dict[str, uncertainty.SeedRuns]:
    stats = [(method, statistic(key, parts)) for method, parts in runs]
    stats = [(m, s) for m, s in stats if s is not None]
    if not stats:
        return {}
    _check_paired(key, [s for _, s in stats])
    n = len(stats[0][1].index)
    if n not in weights:  # 1-2 s to draw at 10k images: once per image count
        weights[n] = uncertainty.resample_weights(n, n_resamples)
    w = weights[n]
    full = np.ones((1, n), dtype=np.float32)
    points: dict[str, list[float]] = {}
    draws: dict[str, list[np.ndarray]] = {}
    for method, s in stats:
        points.setdefault(method, []).append(float(_evaluate(s, full)[0]))
        draws.setdefault(method, []).append(_evaluate(s, w))
    return {m: uncertainty.SeedRuns(np.array(points[m]), np.stack(draws[m])) for m in points}


def _check_paired(key: str, stats: Sequence[Statistic]) -> None:
    # pairing is the whole point of the paired bootstrap: every run must score the same images
    first = stats[0].index
    for s in stats[1:]:
        if s.index.shape != first.shape or not np.array_equal(s.index, first):
            raise ValueError(
                f"{key}: runs were scored on different test images ({s.part} per_image.npz "
                "indices differ); evaluate every run with the same eval.seed and eval.*_images"
            )


def _evaluate(s: Statistic, weights: np.ndarray) -> np.ndarray:
    if s.values is not None:
        return uncertainty.weighted_mean(weights, s.values)
    return uncertainty.weighted_ece(weights, s.confidence, s.correct, s.n_bins)


def claim_verdicts(found: Intervals, rows: Sequence[Row]) -> dict[str, dict]:
    """claim name -> {title, verdict, metrics: {key: verdict of ExCon - SupCon}}."""
    comparisons = found.comparisons.get(CLAIM_PAIR, {})
    out = {}
    for claim in CLAIMS:
        keys = [r.key for r in rows if re.fullmatch(claim.primary, r.key)]
        metrics = {k: comparisons[k].verdict if k in comparisons else None for k in keys}
        out[claim.name] = {
            "title": claim.title,
            "verdict": _claim_verdict(list(metrics.values())),
            "metrics": metrics,
        }
    return out


def _claim_verdict(verdicts: list[str | None]) -> str:
    known = [v for v in verdicts if v is not None]
    if not known:
        return NOT_TESTED
    better, worse = uncertainty.BETTER in known, uncertainty.WORSE in known
    if better and worse:
        return MIXED
    if better:
        return SUPPORTED
    return CONTRADICTED if worse else NOT_SHOWN
