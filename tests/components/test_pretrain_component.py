"""pretrain: the encoder as a Model artifact (weights, not the training checkpoint)."""

import json
import shutil
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
    assert model.metadata == {"method": "excon", "resumed": False}

    summary = json.loads((run / "summary.json").read_text())
    assert metrics.metadata == stages.numeric(summary)
    assert metrics.metadata["epochs"] == 1
    assert 0 <= metrics.metadata["val/top1"] <= 1
    assert {"train/loss", "val/loss", "train_seconds"} <= metrics.metadata.keys()


def test_checkpoint_url_uploads_each_epoch_and_a_retry_resumes(
    make_config, dataset, output, monkeypatch, tmp_path
):
    """The S3 transfer is replaced by a local folder: what is tested is the component's wiring
    (upload after every epoch, restore on retry, resume instead of starting over)."""
    store, uploads, evicted = tmp_path / "bucket", [], []
    store.mkdir()

    def save(url: str, run: Path) -> None:
        uploads.append(url)
        shutil.copy2(run / "checkpoint.pt", store / "checkpoint.pt")
        if not evicted:  # the first pod dies right after its first upload
            evicted.append(True)
            raise RuntimeError("pod evicted")

    def restore(url: str, run: Path) -> bool:
        if not (store / "checkpoint.pt").is_file():
            return False
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy2(store / "checkpoint.pt", run / "checkpoint.pt")
        return True

    monkeypatch.setattr(stages, "save_checkpoint", save)
    monkeypatch.setattr(stages, "restore_checkpoint", restore)
    config, url = make_config("train.epochs=2"), "s3://bucket/excon/pretrain"

    first = output(Model, "attempt1")
    with pytest.raises(RuntimeError, match="pod evicted"):
        pretrain.python_func(
            config=config,
            method="ce",
            dataset=dataset,
            model=first,
            metrics=output(Metrics, "m1"),
            checkpoint_url=url,
        )
    epoch1 = json.loads((Path(first.path) / "metrics.jsonl").read_text().splitlines()[0])

    retry, metrics = output(Model, "attempt2"), output(Metrics, "m2")
    pretrain.python_func(
        config=config,
        method="ce",
        dataset=dataset,
        model=retry,
        metrics=metrics,
        checkpoint_url=url,
    )
    assert uploads == [url, url]  # epoch 1 (first pod), epoch 2 (the retry)
    assert retry.metadata == {"method": "ce", "resumed": True}
    assert not (Path(retry.path) / "checkpoint.pt").exists()
    rows = [
        json.loads(line) for line in (Path(retry.path) / "metrics.jsonl").read_text().splitlines()
    ]
    # epoch 1 comes from the checkpoint, timings and all: it was not trained again
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == epoch1
    assert metrics.metadata["epochs"] == 2


def test_unknown_method_is_a_config_error(make_config, dataset, output):
    model = output(Model, "model")
    with pytest.raises(ConfigError, match=r"method\.name: got 'simclr'"):
        pretrain.python_func(
            config=make_config(),
            method="simclr",
            dataset=dataset,
            model=model,
            metrics=output(Metrics, "metrics"),
        )
    assert not Path(model.path).exists()
