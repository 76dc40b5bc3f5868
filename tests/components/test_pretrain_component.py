"""pretrain: the encoder as a Model artifact (weights, not the training checkpoint). Resuming
from S3 is tested against a real server in tests/storage/test_checkpoint_sync.py."""

import json
from pathlib import Path

import pytest
from kfp.dsl import Metrics, Model

from components.pretrain.component import pretrain
from excon import stages
from excon.config import ConfigError


def test_writes_the_model_and_logs_its_metrics(pretrained):
    model, metrics = pretrained
    run = Path(model.path)
    files = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "model.json", "summary.json", "metrics.jsonl"} <= files
    assert "checkpoint.pt" not in files  # the run's scratch, removed from the output
    assert json.loads((run / "model.json").read_text())["method"] == "excon"
    assert (run / "figures" / "saliency_epoch_001.png").is_file()  # ExCon's Grad-CAM grid
    assert model.metadata == {"method": "excon", "seed": 0, "resumed": False}

    summary = json.loads((run / "summary.json").read_text())
    assert metrics.metadata == stages.numeric(summary)
    assert metrics.metadata["epochs"] == 1
    assert 0 <= metrics.metadata["val/top1"] <= 1
    assert {"train/loss", "val/loss", "train_seconds"} <= metrics.metadata.keys()


def test_unknown_method_is_a_config_error(task, dataset, output):
    model = output(Model, "model")
    with pytest.raises(ConfigError, match=r"method\.name: got 'simclr'"):
        pretrain.python_func(
            **{**task("pretrain"), "method": "simclr"},
            dataset=dataset,
            model=model,
            metrics=output(Metrics, "metrics"),
        )
    assert not Path(model.path).exists()
