"""`excon prepare` + `excon pretrain --method excon` + `excon probe` through the CLI, on fixtures
written in CIFAR-100's and Tiny ImageNet's original formats."""

import json

import pytest

from excon.cli import main

TINY = [
    "model.width=0.0625",
    "model.proj_dim=8",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.device=cpu",
    "method.exp_epochs=0",
    "method.grid_images=2",
    "probe.epochs=2",
]


@pytest.mark.parametrize(
    ("dataset", "write", "batch", "layer"),
    [
        ("cifar100", "write_cifar100", 16, "layer2[1].conv2"),  # 32 px: the early layer
        ("tinyimagenet", "write_tinyimagenet", 8, "layer4[1].conv2"),  # 64 px: the last block
    ],
)
def test_excon_runs_on_original_formats(
    dataset, write, batch, layer, formats, no_download, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # 10 train images per class: the stratified 10 % val split keeps one of each
    getattr(formats, write)(tmp_path / "raw", train_per_class=10)
    sets = [a for s in [*TINY, f"train.batch_size={batch}"] for a in ("--set", s)]
    assert main(["prepare", "--dataset", dataset, "--raw-dir", "raw", *sets]) == 0
    assert main(["pretrain", "--method", "excon", "--set", f"data.dataset={dataset}", *sets]) == 0
    run = tmp_path / "runs" / dataset / "excon" / "seed0"
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= row["train/accept_rate"] <= 1  # masking was active from the first epoch
    assert (run / "figures" / "saliency_epoch_001.png").is_file()
    assert (run / "figures" / "training.png").is_file()
    assert main(["probe", "--method", "excon", "--set", f"data.dataset={dataset}", *sets]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test/top1"] <= 1
    assert json.loads((run / "model.json").read_text())["gradcam_layer"] == layer
