"""evaluate_robustness: accuracy and calibration under FGSM and PGD."""

import pytest
from kfp.dsl import HTML, Artifact, Metrics

from components.evaluate_robustness.component import evaluate_robustness
from excon.config import ConfigError


def test_robustness_metrics_files_and_plots(evaluated):
    out, metrics = evaluated("robustness")
    assert (out / "robustness.csv").is_file()
    for attack in ("fgsm", "pgd"):
        assert 0 <= metrics[f"adv/{attack}/eps4/acc"] <= 1  # eps=[4] in the preset
        assert f"adv/{attack}/eps4/ece" in metrics
    assert not any(k.startswith(("calib/", "expl/")) for k in metrics)


def test_unknown_method_is_a_config_error(task, dataset, pretrained, probed, output):
    evaluation = output(Artifact, "evaluation")
    with pytest.raises(ConfigError, match=r"method\.name: got 'byol'"):
        evaluate_robustness.python_func(
            **{**task("evaluate_robustness"), "method": "byol"},
            dataset=dataset,
            model=pretrained[0],
            probe_head=probed[0],
            evaluation=evaluation,
            metrics=output(Metrics, "metrics"),
            plots=output(HTML, "plots"),
        )
