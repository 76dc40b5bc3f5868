"""prepare: the embedded animals dataset (installed animal-mnist package) as a Dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
from kfp.dsl import Dataset

from components.prepare.component import prepare
from excon.config import ConfigError
from excon.data.prepared import load_prepared


def test_prepares_animals_and_describes_it(tiny_config, task, use_settings, output):
    cfg = tiny_config("data.limit_per_class=5", "tracking.enabled=false")
    dataset = output(Dataset, "dataset")
    use_settings(cfg)
    prepare.python_func(**task("prepare", cfg), dataset=dataset)

    data = load_prepared(Path(dataset.path))  # what every downstream component opens
    manifest = json.loads((Path(dataset.path) / "manifest.json").read_text())
    assert data.num_classes == 10 and data.channels == 1
    for split in ("train", "val", "test"):
        labels = data.split(split).labels
        assert np.bincount(labels, minlength=10).tolist() == [5] * 10  # limit_per_class
        assert manifest["splits"][split] == len(labels)
    assert dataset.metadata == {
        "dataset": "animals",
        "num_classes": 10,
        "train_images": 50,
        "val_images": 50,
        "test_images": 50,
    }


def test_unknown_dataset_is_a_config_error(task, output):
    dataset = output(Dataset, "dataset")
    given = {**task("prepare"), "params": '{"data": {"dataset": "mnist"}}'}
    with pytest.raises(ConfigError, match=r"data\.dataset: got 'mnist'"):
        prepare.python_func(**given, dataset=dataset)
    assert not Path(dataset.path).exists()
