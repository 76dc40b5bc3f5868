"""Deterministic, per-class (stratified) index selection."""

from collections.abc import Sequence

import numpy as np


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices of `labels` into len(fractions) sorted index arrays, class by class.

    Each class is shuffled with one seeded generator and cut at the rounded cumulative
    fractions, so every part keeps the class proportions and the result depends only on
    (labels, fractions, seed).
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim != 1 or len(frac) == 0 or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(frac)[:-1]  # the last part takes the remainder
    parts: list[list[np.ndarray]] = [[] for _ in frac]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(cum * len(idx)).astype(np.int64)
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else _empty() for p in parts]


def subsample_per_class(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` seeded-random items of each class."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else _empty()


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.int64)
