"""evaluate_explanations: Grad-CAM quality of the evaluated classifier."""

from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from components.evaluate_explanations.component import evaluate_explanations
from excon.data.errors import DataError


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


def test_unprepared_dataset_is_named(task, pretrained, probed, output, tmp_path):
    with pytest.raises(DataError, match="prepared dataset not found"):
        evaluate_explanations.python_func(
            **task("evaluate_explanations"),
            dataset=Dataset(name="dataset", uri=str(tmp_path / "nothing"), metadata={}),
            model=pretrained[0],
            probe_head=probed[0],
            evaluation=output(Artifact, "evaluation"),
            metrics=output(Metrics, "metrics"),
            plots=output(HTML, "plots"),
        )
    assert not Path(tmp_path / "evaluation").exists()
