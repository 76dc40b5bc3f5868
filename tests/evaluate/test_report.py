import json

import numpy as np
import pytest

from excon.evaluate import per_image
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
    # without per-image values (runs evaluated before they were saved): no intervals, no claim
    assert "supports 0 of the paper's 4 claims" in table and "rerun `excon evaluate`" in table
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["methods"]["excon"]["test/top1"] == {
        "mean": 0.85,
        "std": 0.0,
        "n": 1,
        "low": None,
        "high": None,
    }
    assert {c["verdict"] for c in on_disk["claims"]["each"]} == {"not tested"}
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


@pytest.fixture
def study(run_with_values):
    return lambda root, excon_acc=0.85, seeds=(0, 1): _study(
        run_with_values, root, excon_acc, seeds
    )


def _study(make, root, excon_acc, seeds):
    """ce, supcon at 0.6 accuracy; excon at `excon_acc` with a lower average drop."""
    return [
        make(root, method, seed, acc, drop)
        for method, acc, drop in (("ce", 0.6, 0.5), ("supcon", 0.6, 0.5), ("excon", excon_acc, 0.3))
        for seed in seeds
    ]


def test_report_opens_with_the_claims_this_run_supports(tmp_path, study):
    report(study(tmp_path), tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2].startswith("**This run supports 2 of the paper's 4 claims** (excon − supcon")
    assert "seeds ce 2, supcon 2, excon 2" in lines[2]
    assert lines[4] == "- accuracy: **supported** (top-1 better)"
    assert lines[5].startswith("- calibration under shift (FGSM ECE): **")
    assert "FGSM-4 ECE" in lines[5] and "FGSM-0 " not in lines[5]  # eps 0 is no shift
    assert lines[7].startswith("- explanation quality (Average Drop, Increase): **supported**")
    # FGSM ECE is the paper's calibration claim, beside PGD; corruption shift an extension
    assert "| *Calibration under shift: FGSM ECE (paper's claim), PGD beside it* |" in text
    assert text.index("| FGSM-4 ECE ↓") < text.index("| PGD-4 ECE ↓")
    assert "Calibration under corruption shift (extension)" in text
    # every pair is compared, ExCon - SupCon first, with its verdict
    assert "| metric | excon − supcon | excon − ce | supcon − ce |" in text
    top1 = [line for line in lines if line.startswith("| top-1 ↑ |")][-1]  # the differences
    assert top1.count("**better**") == 2 and top1.endswith("within noise |")


def test_report_json_carries_intervals_and_verdicts_as_strict_json(tmp_path, study):
    report(study(tmp_path), tmp_path / "report")
    raw = (tmp_path / "report" / "report.json").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    on_disk = json.loads(raw)
    assert on_disk["claims"]["supported"] == 2 and on_disk["claims"]["of"] == 4
    accuracy, calibration, robustness, explanations = on_disk["claims"]["each"]  # paper's order
    assert accuracy["name"] == "accuracy" and accuracy["verdict"] == "supported"
    assert accuracy["metrics"] == {"test/top1": "better"}
    assert calibration["metrics"]["adv/fgsm/eps4/ece"] in ("better", "worse", "within noise")
    assert robustness["name"] == "robustness" and explanations["verdict"] == "supported"
    top1 = on_disk["methods"]["excon"]["test/top1"]
    assert top1["low"] < top1["mean"] < top1["high"] and top1["n"] == 2
    cmp = on_disk["comparisons"]["excon-supcon"]["test/top1"]
    assert cmp["verdict"] == "better" and 0 < cmp["low"] < cmp["diff"] < cmp["high"]
    assert on_disk["comparisons"]["supcon-ce"]["test/top1"]["verdict"] == "within noise"
    assert on_disk["seeds"] == {"ce": 2, "supcon": 2, "excon": 2}


def test_equal_methods_are_within_noise_and_support_nothing(tmp_path, study):
    report(study(tmp_path, excon_acc=0.6, seeds=(0,)), tmp_path / "report")
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["claims"]["each"][0]["verdict"] != "supported"
    assert "one seed per method" in (tmp_path / "report" / "report.md").read_text()


def test_runs_scored_on_different_images_are_refused(tmp_path, study):
    runs = study(tmp_path, seeds=(0,))
    path = runs[0] / "eval" / "calibration" / per_image.FILE
    arrays = dict(np.load(path))
    arrays["index"] = arrays["index"] + 1
    per_image.save(path.parent, arrays)
    with pytest.raises(ValueError, match="different test images"):
        report(runs, tmp_path / "report")


def test_report_takes_seconds(tmp_path, run_with_values):
    import time

    runs = [run_with_values(tmp_path, m, s, 0.6, n=10000) for m in ("ce", "excon") for s in (0, 1)]
    start = time.perf_counter()
    report(runs, tmp_path / "report")
    assert time.perf_counter() - start < 30


def test_without_both_excon_and_supcon_no_claim_is_tested(tmp_path, run_with_values):
    runs = [run_with_values(tmp_path, m, 0, 0.6) for m in ("ce", "excon")]
    report(runs, tmp_path / "report")
    lines = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert lines[2] == (
        "**This run tests none of the paper's 4 claims**: they compare ExCon with SupCon, "
        "and this report has ce, excon."
    )
    assert lines[4] == "- accuracy: **not tested**"


def test_the_report_names_the_protocol_and_labels_test_selection(tmp_path):
    ref = {"protocol": "reference", "head": "online", "online/top1": 0.7}
    runs = [
        fake_run(tmp_path, "supcon", 0, **ref, **{"online/top1_best_epoch": 0.74}),
        fake_run(tmp_path, "excon", 0, **ref, **{"online/top1_best_epoch": 0.76}),
    ]
    report(runs, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Protocol (`study.protocol`): reference (the authors' --validation=0)" in text
    assert "| online head top-1, last epoch ↑ | **0.7000** | 0.7000 |" in text  # ties: first
    assert "| online head top-1, best epoch (selected on test) ↑ | 0.7400 | **0.7600** |" in text
    assert json.loads((tmp_path / "report" / "report.json").read_text())["protocols"] == [
        "reference"
    ]
    heldout = [fake_run(tmp_path / "h", "ce", 0, **{"test/top1": 0.5})]  # runs before protocols
    report(heldout, tmp_path / "h" / "report")
    assert "Protocol (`study.protocol`): heldout:" in (tmp_path / "h/report/report.md").read_text()
