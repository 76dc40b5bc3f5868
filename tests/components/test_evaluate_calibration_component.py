"""evaluate_calibration: probe and online-head accuracy, calibration clean and under shift."""

import pytest
from kfp.dsl import HTML, Artifact, Metrics, Model

from components.evaluate_calibration.component import evaluate_calibration


def test_calibration_metrics_files_and_plots(evaluated, probed):
    out, metrics = evaluated("calibration")
    assert {"reliability.csv", "shift.csv", "reliability.png"} <= {p.name for p in out.iterdir()}
    for key in ("online/top1", "calib/ece", "calib/nll", "calib/brier", "shift/mean/acc"):
        assert key in metrics, key
    assert {"shift/contrast/1/ece", "shift/contrast/5/ece"} <= metrics.keys()  # the preset's
    assert not any(k.startswith(("adv/", "expl/")) for k in metrics)  # one part per component
    # the same head on the same test split: the probe's own test accuracy
    assert metrics["test/top1"] == probed[1].metadata["test/top1"]


def test_missing_probe_head_is_named(task, dataset, pretrained, output, tmp_path):
    empty = tmp_path / "no_head"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"probe_head\.safetensors: missing"):
        evaluate_calibration.python_func(
            **task("evaluate_calibration"),
            dataset=dataset,
            model=pretrained[0],
            probe_head=Model(name="probe_head", uri=str(empty), metadata={}),
            evaluation=output(Artifact, "evaluation"),
            metrics=output(Metrics, "metrics"),
            plots=output(HTML, "plots"),
        )
