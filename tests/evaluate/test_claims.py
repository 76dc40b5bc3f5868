"""Rows by claim, the pairs compared, and each claim's verdict from its metrics' verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from excon.evaluate import claims
from excon.evaluate.uncertainty import BETTER, NOISE, WORSE, Comparison


def test_rows_group_by_claim_with_fgsm_beside_pgd_at_each_eps():
    keys = {
        "calib/ece",
        "test/top1",
        "shift/mean/ece",
        "expl/avg_drop",
        "adv/pgd/eps8/acc",
        "adv/fgsm/eps8/acc",
        "adv/pgd/eps4/ece",
        "adv/fgsm/eps4/ece",
        "adv/fgsm/eps0.5/ece",
    }
    rows = claims.rows_for(keys)
    assert [r.key for r in rows] == [
        "test/top1",
        "adv/fgsm/eps0.5/ece",
        "adv/fgsm/eps4/ece",
        "adv/pgd/eps4/ece",
        "adv/fgsm/eps8/acc",
        "adv/pgd/eps8/acc",
        "expl/avg_drop",
        "calib/ece",
        "shift/mean/ece",
    ]
    by_key = {r.key: r for r in rows}
    assert by_key["adv/fgsm/eps0.5/ece"].title == "FGSM-0.5 ECE"
    assert by_key["adv/fgsm/eps4/ece"].direction == -1
    assert by_key["adv/fgsm/eps8/acc"].direction == +1
    assert by_key["shift/mean/ece"].section == "corruption"  # an extension, not the claim


def test_pairs_put_excon_against_supcon_first():
    assert claims.pairs(["ce", "supcon", "excon"]) == [
        ("excon", "supcon"),
        ("excon", "ce"),
        ("supcon", "ce"),
    ]
    assert claims.pairs(["excon"]) == []


def _found(verdicts: dict[str, str]) -> claims.Intervals:
    found = claims.Intervals()
    found.comparisons[claims.CLAIM_PAIR] = {
        k: Comparison(0.0, -1.0, 1.0, v) for k, v in verdicts.items()
    }
    return found


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({"adv/fgsm/eps2/ece": BETTER, "adv/fgsm/eps4/ece": NOISE}, claims.SUPPORTED),
        ({"adv/fgsm/eps2/ece": WORSE, "adv/fgsm/eps4/ece": NOISE}, claims.CONTRADICTED),
        ({"adv/fgsm/eps2/ece": WORSE, "adv/fgsm/eps4/ece": BETTER}, claims.MIXED),
        ({"adv/fgsm/eps2/ece": NOISE, "adv/fgsm/eps4/ece": NOISE}, claims.NOT_SHOWN),
        ({}, claims.NOT_TESTED),
    ],
)
def test_a_claim_is_supported_when_better_somewhere_and_worse_nowhere(verdicts, expected):
    keys = {"adv/fgsm/eps0/ece", "adv/fgsm/eps2/ece", "adv/fgsm/eps4/ece", "adv/pgd/eps4/ece"}
    keys |= {"adv/fgsm/eps0.5/ece"}
    rows = claims.rows_for(keys)
    got = claims.claim_verdicts(_found(verdicts), rows)["calibration"]
    assert got["verdict"] == expected
    # the verdict rests on FGSM at eps > 0: eps 0 is the clean image, PGD an extension
    assert set(got["metrics"]) == {"adv/fgsm/eps0.5/ece", "adv/fgsm/eps2/ece", "adv/fgsm/eps4/ece"}


def test_every_claim_is_reported_even_without_data():
    got = claims.claim_verdicts(claims.Intervals(), [])
    assert list(got) == ["accuracy", "calibration", "robustness", "explanations"]
    assert {v["verdict"] for v in got.values()} == {claims.NOT_TESTED}


def _runs(correct_by_run: dict[tuple[str, int], np.ndarray]) -> list:
    return [
        (method, {"calibration": {"index": np.arange(len(c)), "correct": c}})
        for (method, _), c in correct_by_run.items()
    ]


def test_intervals_pair_seeds_and_stay_inside_the_metrics_range():
    ones, most = np.ones(40), (np.arange(40) % 10 != 0).astype(float)  # 1.0 and 0.9 top-1
    runs = _runs({("supcon", 0): most, ("supcon", 1): most, ("excon", 0): ones, ("excon", 1): most})
    rows = claims.rows_for({"test/top1"})
    found = claims.intervals(["supcon", "excon"], runs, rows)
    est = found.estimates["test/top1"]["excon"]
    assert est.value == pytest.approx(0.95) and est.seeds == 2
    assert est.high == 1.0  # the seed term's t tail would pass 1: cut at the range
    cmp = found.comparisons[("excon", "supcon")]["test/top1"]
    assert cmp.diff == pytest.approx(0.05) and cmp.low < 0 < cmp.high  # 2 seeds, one differs
    assert found.seeds == {"supcon": 2, "excon": 2}


def test_a_difference_interval_stays_inside_its_range():
    """Seeds at 0 and 1 top-1: the t tails (2 dof) reach past +-2; a rate difference cannot."""
    zeros, ones = np.zeros(20), np.ones(20)
    runs = _runs(
        {("supcon", 0): zeros, ("supcon", 1): ones, ("excon", 0): ones, ("excon", 1): ones}
    )
    found = claims.intervals(["supcon", "excon"], runs, claims.rows_for({"test/top1"}))
    cmp = found.comparisons[("excon", "supcon")]["test/top1"]
    assert (cmp.low, cmp.high) == (-1.0, 1.0) and cmp.verdict == "within noise"
