import json

import pytest

from excon.evaluate.report import markdown_table, report, summarise
from excon.testing import write_eval_parts


def fake_run(root, method, seed, **metrics):
    run = root / f"{method}-{seed}"
    row = {"method": method, "seed": seed, "dataset": "toy", **metrics}
    write_eval_parts(run, row)
    return run


def test_report_on_two_fake_runs(tmp_path):
    runs = [
        fake_run(
            tmp_path, "supcon", 0, **{"test/top1": 0.80, "calib/ece": 0.10, "adv/pgd/eps4/acc": 0.2}
        ),
        fake_run(
            tmp_path, "supcon", 1, **{"test/top1": 0.84, "calib/ece": 0.06, "adv/pgd/eps4/acc": 0.3}
        ),
        fake_run(
            tmp_path, "excon", 0, **{"test/top1": 0.85, "calib/ece": 0.09, "adv/pgd/eps1/acc": 0.6}
        ),
    ]
    summary = report(runs, tmp_path / "report")
    assert list(summary) == ["supcon", "excon"]  # ce, supcon, excon order
    mean, std, n = summary["supcon"]["test/top1"]
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.028284, abs=1e-6) and n == 2
    assert "seed" not in summary["supcon"]
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| top-1 ↑ | 0.8200 ± 0.0283 | **0.8500** |" in table
    assert "| ECE ↓ | **0.0800 ± 0.0283** | 0.0900 |" in table
    assert "| PGD-4 acc ↑ | 0.2500 ± 0.0707 | – |" in table  # missing for excon
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["excon"]["test/top1"] == {"mean": 0.85, "std": 0.0, "n": 1}
    for png in ("headline.png", "robustness_pgd.png", "robustness_fgsm.png", "shift_ece.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_missing_evaluation_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `excon evaluate --part calibration`"):
        report([tmp_path / "nothing"], tmp_path / "out")


def test_nan_values_are_left_out():
    rows = [{"method": "ce", "expl/pointing_game": float("nan"), "test/top1": 0.5}]
    summary = summarise(rows)
    assert "expl/pointing_game" not in summary["ce"]
    assert "pointing game" not in markdown_table(summary)
