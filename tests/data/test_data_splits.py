import numpy as np
import pytest

from excon.data.splits import stratified_split, subsample_per_class


def _labels():
    return np.repeat(np.arange(5), [100, 50, 20, 10, 7])


def test_stratified_split_is_a_sorted_deterministic_partition():
    labels = _labels()
    parts = stratified_split(labels, [0.8, 0.1, 0.1], seed=3)
    again = stratified_split(labels, [0.8, 0.1, 0.1], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and complete
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
    other = stratified_split(labels, [0.8, 0.1, 0.1], seed=4)
    assert not np.array_equal(parts[1], other[1])


def test_stratified_split_keeps_class_proportions():
    labels = _labels()
    train, val, test = stratified_split(labels, [0.8, 0.1, 0.1], seed=0)
    for cls, n in enumerate([100, 50, 20, 10]):
        assert (labels[train] == cls).sum() == round(0.8 * n)
        assert (labels[val] == cls).sum() == round(0.1 * n)
        assert (labels[test] == cls).sum() == n - round(0.9 * n)


@pytest.mark.parametrize("fractions", [[0.5, 0.6], [1.2, -0.2], []])
def test_stratified_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match=r"fractions"):
        stratified_split(_labels(), fractions, seed=0)


def test_subsample_per_class():
    labels = _labels()
    keep = subsample_per_class(labels, 8, seed=1)
    assert np.array_equal(keep, subsample_per_class(labels, 8, seed=1))
    assert np.bincount(labels[keep]).tolist() == [8, 8, 8, 8, 7]
    assert np.array_equal(keep, np.sort(keep))
