"""probe: the linear probe head on the frozen encoder, as its own Model artifact."""

import json
from pathlib import Path

import pytest
from kfp.dsl import Metrics, Model
from safetensors.torch import load_file

from components.probe.component import probe
from excon import stages


def test_writes_the_head_and_its_metrics(probed, pretrained):
    head, metrics = probed
    out = Path(head.path)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "probe_head.safetensors"]
    assert not any(p.is_symlink() for p in out.iterdir())  # real files: KFP uploads them
    weights = load_file(str(out / "probe_head.safetensors"))
    meta = json.loads((Path(pretrained[0].path) / "model.json").read_text())
    assert weights["weight"].shape[0] == meta["num_classes"] == 4

    written = json.loads((out / "metrics.json").read_text())
    assert metrics.metadata == stages.numeric(written)
    assert metrics.metadata["probe/lr"] == 0.1  # the one-value grid
    for key in ("val/top1", "test/top1", "test/top5"):
        assert 0 <= metrics.metadata[key] <= 1
    # the encoder's artifact is an input: nothing may be added to it
    assert not {"probe_head.safetensors", "metrics.json"} & {
        p.name for p in Path(pretrained[0].path).iterdir()
    }


def test_missing_encoder_is_named(task, dataset, output, tmp_path):
    empty = tmp_path / "no_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"model\.json: missing"):
        probe.python_func(
            **task("probe"),
            dataset=dataset,
            model=Model(name="model", uri=str(empty), metadata={}),
            probe_head=output(Model, "probe_head"),
            metrics=output(Metrics, "metrics"),
        )
