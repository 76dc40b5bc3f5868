"""Bootstrap intervals against scipy.stats.bootstrap, ECE on resamples against the torch ECE on
explicitly drawn images, and the seed term against the t interval it should reduce to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from excon.evaluate import uncertainty as u
from excon.evaluate.calibration import ece


def _one_seed(values: np.ndarray, weights: np.ndarray) -> u.SeedRuns:
    ones = np.ones((1, len(values)), dtype=np.float32)
    return u.SeedRuns(u.weighted_mean(ones, values), u.weighted_mean(weights, values)[None])


def test_resample_weights_draw_n_images_per_row_and_repeat_for_the_same_n():
    w = u.resample_weights(50, n_resamples=30)
    assert w.shape == (30, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    assert np.array_equal(w, u.resample_weights(50, n_resamples=30))
    assert not np.array_equal(w, u.resample_weights(50, n_resamples=30, seed=1))
    # every image is drawn with probability 1/n: mean count 1
    assert u.resample_weights(20, n_resamples=4000).mean(axis=0) == pytest.approx(1, abs=0.05)


def test_weighted_mean_is_the_mean_of_the_drawn_images_and_skips_nan():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    weights = np.array([[1, 0, 2, 1], [0, 4, 0, 0], [1, 1, 1, 1]], dtype=np.float32)
    got = u.weighted_mean(weights, values)
    assert got[0] == pytest.approx((1 + 3 + 3 + 5) / 4)
    assert np.isnan(got[1])  # only undefined images drawn: undefined
    assert got[2] == pytest.approx(3.0)


def _drawn(weights_row: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(weights_row)), weights_row.astype(int))


def test_ece_on_each_resample_equals_the_torch_ece_of_the_drawn_images():
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(0, 2, (300, 5))), dim=1).float()
    labels = torch.from_numpy(rng.integers(0, 5, 300))
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).numpy().astype(np.float32)
    weights = u.resample_weights(300, n_resamples=5)
    got = u.weighted_ece(weights, confidence.numpy(), correct, n_bins=10)
    for row, value in zip(weights, got, strict=True):
        idx = torch.from_numpy(_drawn(row))
        assert value == pytest.approx(ece(probs[idx], labels[idx], 10), abs=1e-5)


def test_ece_of_several_sets_is_the_mean_of_each_sets_ece():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.2, 1, (3, 100)).astype(np.float32)
    correct = (rng.uniform(size=(3, 100)) < conf).astype(np.float32)
    weights = u.resample_weights(100, n_resamples=4)
    each = [u.weighted_ece(weights, c, a) for c, a in zip(conf, correct, strict=True)]
    assert u.weighted_ece(weights, conf, correct) == pytest.approx(np.mean(each, axis=0))


def test_bin_edges_are_netcals_lower_inclusive_bins():
    # 0.1 exactly is in bin 1 ([0.1, 0.2)), 0 in bin 0, 1 in the last bin
    got = u.bin_index(np.array([0.0, 0.0999, 0.1, 0.5, 0.9999, 1.0]), 10)
    assert list(got) == [0, 0, 1, 5, 9, 9]


def test_paired_difference_interval_matches_scipy_bootstrap():
    """One seed: the interval is scipy's paired percentile bootstrap of mean(a) - mean(b)."""
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 1, 400)  # image difficulty, shared by both methods: pairing matters
    a = shared + rng.normal(0.15, 0.5, 400)
    b = shared + rng.normal(0.0, 0.5, 400)
    weights = u.resample_weights(400, n_resamples=10000)
    got = u.compare(_one_seed(a, weights), _one_seed(b, weights), +1, 0.0, 0)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=10000,
        method="percentile",
        random_state=np.random.default_rng(3),
    ).confidence_interval
    width = ref.high - ref.low
    assert got.diff == pytest.approx(a.mean() - b.mean(), abs=1e-5)
    assert got.low == pytest.approx(ref.low, abs=0.05 * width)
    assert got.high == pytest.approx(ref.high, abs=0.05 * width)
    assert got.verdict == u.BETTER
    # unpaired, the shared difficulty would swamp the difference: pairing is what shows it
    assert width < 0.5 * (2 * 1.96 * np.sqrt(np.var(a) / 400 + np.var(b) / 400))


def test_ece_difference_interval_matches_scipy_bootstrap():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.3, 1, (2, 500))
    correct = (rng.uniform(size=(2, 500)) < conf - np.array([[0.0], [0.15]])).astype(float)

    def ece_np(c: np.ndarray, a: np.ndarray) -> float:  # a plain per-bin loop
        bins = np.clip(np.ceil(c * 10) - 1, 0, 9)
        return sum(abs(a[bins == k].sum() - c[bins == k].sum()) for k in range(10)) / len(c)

    weights = u.resample_weights(500, n_resamples=2000)
    runs = []
    for c, a in zip(conf, correct, strict=True):
        full = u.weighted_ece(np.ones((1, 500), np.float32), c, a)
        runs.append(u.SeedRuns(full, u.weighted_ece(weights, c, a)[None]))
    got = u.compare(runs[0], runs[1], -1, 0.0, 0)
    ref = stats.bootstrap(
        (conf[0], correct[0], conf[1], correct[1]),
        lambda c0, a0, c1, a1: ece_np(c0, a0) - ece_np(c1, a1),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    width = ref.high - ref.low
    assert got.diff == pytest.approx(ece_np(conf[0], correct[0]) - ece_np(conf[1], correct[1]))
    assert got.low == pytest.approx(ref.low, abs=0.1 * width)
    assert got.high == pytest.approx(ref.high, abs=0.1 * width)
    assert got.verdict == u.BETTER  # method 0 is the better calibrated


def test_seed_spread_alone_gives_the_pooled_t_interval():
    """No image noise (every image scores the same): the interval is the two-sample pooled t
    interval over seeds."""
    a_points, b_points = np.array([0.70, 0.74, 0.72]), np.array([0.60, 0.65, 0.61])
    groups = [u.SeedRuns(p, np.repeat(p[:, None], 20000, axis=1)) for p in (a_points, b_points)]
    variance, dof = u.pooled_seed_variance(groups)
    assert dof == 4
    assert variance == pytest.approx((np.var(a_points, ddof=1) + np.var(b_points, ddof=1)) / 2)
    got = u.compare(*groups, +1, variance, dof)
    half = stats.t.ppf(0.975, dof) * np.sqrt(variance * (1 / 3 + 1 / 3))
    diff = a_points.mean() - b_points.mean()
    assert got.low == pytest.approx(diff - half, rel=0.05)
    assert got.high == pytest.approx(diff + half, rel=0.05)


def test_one_seed_everywhere_has_no_seed_term():
    groups = [u.SeedRuns(np.array([0.5]), np.full((1, 10), 0.5)) for _ in range(2)]
    assert u.pooled_seed_variance(groups) == (0.0, 0)
    est = u.estimate(groups[0], 0.0, 0)
    assert (est.value, est.low, est.high, est.seeds) == (0.5, 0.5, 0.5, 1)


@pytest.mark.parametrize(
    ("low", "high", "direction", "expected"),
    [
        (0.01, 0.02, +1, u.BETTER),
        (0.01, 0.02, -1, u.WORSE),
        (-0.02, -0.01, -1, u.BETTER),
        (-0.02, -0.01, +1, u.WORSE),
        (-0.01, 0.01, +1, u.NOISE),
        (float("nan"), 0.01, +1, None),
    ],
)
def test_verdict_follows_the_interval_and_the_direction(low, high, direction, expected):
    assert u.verdict(low, high, direction) == expected
