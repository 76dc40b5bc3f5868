"""Paired bootstrap intervals of metric differences between methods, seed spread folded in.

Two sources of noise make a difference between two methods uncertain:

1. **The test images.** Every run is scored on the same images (same indices, asserted by the
   report), so the comparison is paired: one resample of the images is applied to every run at
   once. A resample is a row of a count matrix `W` [B, n] (how often each image is drawn), so a
   mean over a resample is one matrix product `W @ values / n`, and ECE, not a per-image mean,
   is recomputed on each resample from per-bin sums `W @ onehot(bin) * conf` (also a product):
   no Python loop over resamples.
2. **The training seed.** With several seeds per method, a method's value is the mean over its
   seeds, and its image-bootstrap distribution the mean of its seeds' distributions (the same
   resamples for every seed). The seeds' spread is training noise the images cannot show: its
   variance s^2 is pooled over every method with at least two seeds (few seeds per method, so
   one shared estimate is steadier than one per method), and the difference a - b gets a
   between-seed term s^2 (1/K_a + 1/K_b), drawn as a scaled Student t with the pooled degrees
   of freedom (sum of K - 1) and added to each bootstrap draw. The 95 % interval is the 2.5 and
   97.5 percentiles of the sum. With a single seed everywhere there is no such term (and the
   report says so): the interval is the plain paired percentile bootstrap, the same as
   `scipy.stats.bootstrap(..., paired=True, method="percentile")` (tests hold it there).

A comparison is `better` or `worse` when the interval excludes 0 (in the metric's good or bad
direction) and `within noise` when it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000  # percentiles at 2.5 % / 97.5 % rest on 50 draws each side
LEVEL = 0.95
SEED = 0
BETTER, WORSE, NOISE = "better", "worse", "within noise"


def resample_weights(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[B, n] float32 counts: row b says how often each of n images is drawn in resample b.

    Seeded by (seed, n) alone, so every run scored on n images sees the same resamples."""
    rng = np.random.default_rng([seed, n])
    idx = rng.integers(0, n, size=(n_resamples, n))
    flat = (idx + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n * n_resamples).reshape(n_resamples, n).astype(np.float32)


def weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[B] means of per-image `values` [n] under each resample's counts; NaN values (undefined
    for that image, e.g. an empty foreground mask) are left out, as `nanmean` would."""
    valid = ~np.isnan(values)
    stacked = np.stack([np.where(valid, values, 0.0), valid]).T.astype(weights.dtype)  # [n, 2]
    sums = weights @ stacked
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 0] / sums[:, 1]


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence, lower-inclusive as `calibration.reliability_bins` and
    netcal ([i/n, (i+1)/n), 1 in the last bin): searchsorted 'right' on netcal's float64 inner
    edges is torch.bucketize(right=True)."""
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner, confidence.astype(np.float64), side="right")


def weighted_ece(
    weights: np.ndarray, confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> np.ndarray:
    """[B] ECE under each resample, averaged over sets: confidence and correct are [n] (one
    set) or [S, n] (S sets of the same images, e.g. corruptions, each its own ECE).

    Per bin, count * |mean acc - mean conf| = |sum acc - sum conf|, so ECE is
    sum over bins |sum acc - sum conf| / n: one matrix product."""
    conf = np.atleast_2d(confidence).astype(np.float32)
    acc = np.atleast_2d(correct).astype(np.float32)
    sets, n = conf.shape
    # [n, S * n_bins]: image i's (acc - conf) in the column of its set's bin, 0 elsewhere; one
    # product for all sets keeps BLAS busy (75 corruption sets x 10k images: well under a second)
    columns = bin_index(conf, n_bins) + n_bins * np.arange(sets)[:, None]  # [S, n]
    design = np.zeros((n, sets * n_bins), dtype=np.float32)
    np.put_along_axis(design, columns.T, (acc - conf).T, axis=1)
    gap = (weights @ design).reshape(len(weights), sets, n_bins)  # sum acc - sum conf per bin
    return np.abs(gap).sum(axis=2).mean(axis=1) / weights.sum(axis=1)


@dataclass(frozen=True)
class Estimate:
    """A method's value (mean over seeds) with its 95 % interval."""

    value: float
    low: float
    high: float
    seeds: int


@dataclass(frozen=True)
class Comparison:
    """a - b with its 95 % interval and the verdict for a (higher is better when direction=+1)."""

    diff: float
    low: float
    high: float
    verdict: str | None  # None: undefined (a value or an interval is missing)


@dataclass(frozen=True)
class SeedRuns:
    """One method's runs on one metric: each seed's full-data value and its bootstrap draws."""

    points: np.ndarray  # [K]
    draws: np.ndarray  # [K, B], the same resamples for every run

    @property
    def seeds(self) -> int:
        return len(self.points)


def pooled_seed_variance(groups: Sequence[SeedRuns]) -> tuple[float, int]:
    """(s^2, degrees of freedom) of the training-seed spread pooled over methods with >= 2 seeds;
    (0, 0) when no method has two."""
    dof = sum(g.seeds - 1 for g in groups)
    if dof == 0:
        return 0.0, 0
    squares = sum(((g.points - g.points.mean()) ** 2).sum() for g in groups)
    return float(squares / dof), dof


def _seed_noise(scale: float, dof: int, size: int, seed: int) -> np.ndarray:
    if dof == 0 or scale == 0:
        return np.zeros(size)
    return scale * np.random.default_rng(seed).standard_t(dof, size)


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def estimate(group: SeedRuns, variance: float, dof: int, seed: int = SEED) -> Estimate:
    """The method's seed-mean with a 95 % interval: images bootstrapped, plus seed noise s^2 / K."""
    draws = group.draws.mean(axis=0)
    noise = _seed_noise(np.sqrt(variance / group.seeds), dof, draws.size, seed)
    low, high = _percentiles(draws + noise)
    return Estimate(float(group.points.mean()), low, high, group.seeds)


def compare(
    a: SeedRuns, b: SeedRuns, direction: int, variance: float, dof: int, seed: int = SEED
) -> Comparison:
    """a - b (seed means) with its 95 % interval: the paired image bootstrap of the difference plus
    the between-seed term s^2 (1/K_a + 1/K_b); better/worse for a when 0 is outside."""
    draws = a.draws.mean(axis=0) - b.draws.mean(axis=0)
    scale = np.sqrt(variance * (1 / a.seeds + 1 / b.seeds))
    low, high = _percentiles(draws + _seed_noise(scale, dof, draws.size, seed))
    diff = float(a.points.mean() - b.points.mean())
    return Comparison(diff, low, high, verdict(low, high, direction))


def verdict(low: float, high: float, direction: int) -> str | None:
    """better / worse when the interval of a - b excludes 0, within noise when it holds it."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    if low > 0 or high < 0:
        return BETTER if (low > 0) == (direction > 0) else WORSE
    return NOISE
