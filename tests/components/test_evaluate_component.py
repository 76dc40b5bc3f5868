"""evaluate: one component, one part per task (calibration, robustness, explanations); each part
writes its own metrics, files and plots and nothing of the other parts."""

from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

from components.evaluate.component import evaluate
from excon.config import ConfigError
from excon.data.errors import DataError


def test_calibration_metrics_files_and_plots(evaluated, probed):
    out, metrics = evaluated("calibration")
    assert {"reliability.csv", "shift.csv", "reliability.png"} <= {p.name for p in out.iterdir()}
    for key in ("online/top1", "calib/ece", "calib/nll", "calib/brier", "shift/mean/acc"):
        assert key in metrics, key
    assert {"shift/contrast/1/ece", "shift/contrast/5/ece"} <= metrics.keys()  # the preset's
    assert not any(k.startswith(("adv/", "expl/")) for k in metrics)  # one part per task
    # the same head on the same test split: the probe's own test accuracy
    assert metrics["test/top1"] == probed[1].metadata["test/top1"]


def test_robustness_metrics_files_and_plots(evaluated):
    out, metrics = evaluated("robustness")
    assert (out / "robustness.csv").is_file()
    for attack in ("fgsm", "pgd"):
        assert 0 <= metrics[f"adv/{attack}/eps4/acc"] <= 1  # eps=[4] in the preset
        assert f"adv/{attack}/eps4/ece" in metrics
    assert not any(k.startswith(("calib/", "expl/")) for k in metrics)


def test_explanation_metrics_files_and_plots(evaluated):
    out, metrics = evaluated("explanations")
    assert (out / "saliency_test.png").is_file()
    for key in (
        "expl/avg_drop",
        "expl/increase",
        "expl/deletion_auc",
        "expl/insertion_auc",
        "expl/pointing_game",  # the blobs carry masks, so pointing is measured
        "expl/energy_pointing_game",
    ):
        assert 0 <= metrics[key] <= 1, key
    assert not any(k.startswith(("calib/", "adv/")) for k in metrics)


def test_each_evaluation_records_its_run_for_pairing(evaluations):
    """The report and register tasks pair a run's artifacts by this (dsl.Collected has no
    documented order)."""
    for part, (evaluation, _, _) in evaluations.items():
        assert evaluation.metadata == {"method": "excon", "seed": 0, "part": part}


def run(task, stage: str, output, **artifacts) -> None:
    evaluate.python_func(
        **task(f"evaluate_{stage}") | artifacts.pop("given", {}),
        part=stage,
        **artifacts,
        evaluation=output(Artifact, "evaluation"),
        metrics=output(Metrics, "metrics"),
        plots=output(HTML, "plots"),
    )


def test_missing_probe_head_is_named(task, dataset, pretrained, output, tmp_path):
    empty = tmp_path / "no_head"
    empty.mkdir()
    head = Model(name="probe_head", uri=str(empty), metadata={})
    with pytest.raises(FileNotFoundError, match=r"probe_head\.safetensors: missing"):
        run(task, "calibration", output, dataset=dataset, model=pretrained[0], probe_head=head)


def test_unknown_method_is_a_config_error(task, dataset, pretrained, probed, output):
    with pytest.raises(ConfigError, match=r"method\.name: got 'byol'"):
        run(task, "robustness", output, given={"method": "byol"}, dataset=dataset,
            model=pretrained[0], probe_head=probed[0])  # fmt: skip


def test_unprepared_dataset_is_named(task, pretrained, probed, output, tmp_path):
    nothing = Dataset(name="dataset", uri=str(tmp_path / "nothing"), metadata={})
    with pytest.raises(DataError, match="prepared dataset not found"):
        run(task, "explanations", output, dataset=nothing, model=pretrained[0],
            probe_head=probed[0])  # fmt: skip
    assert not Path(tmp_path / "evaluation").exists()
