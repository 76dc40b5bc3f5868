import json

import torch

from excon.data.views import ViewDataset
from excon.probe import fit_linear, probe, topk_accuracy
from excon.train import pretrain


def test_probe_writes_val_selected_metrics(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=2", "probe.lrs=[0.01, 0.5]")
    pretrain(cfg, prepared, tmp_path / "run")
    metrics = probe(cfg, prepared, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["method"] == "ce"
    assert metrics["probe/lr"] in (0.01, 0.5)
    assert 1 <= metrics["probe/epoch"] <= cfg.probe.epochs
    for split in ("val", "test"):
        assert 0 <= metrics[f"{split}/top1"] <= metrics[f"{split}/top5"] <= 1
    # The saved head (standardisation folded in) reproduces the reported test accuracy.
    from excon import artifacts
    from excon.data.prepared import load_prepared
    from excon.probe import load_probe_head

    model, _ = artifacts.load_model(tmp_path / "run")
    model.classifier = load_probe_head(tmp_path / "run")
    test = load_prepared(prepared).split("test")
    ds = ViewDataset(test.images, test.labels, ["standard"], *_stats(prepared))
    images = torch.stack([ds[i][0][0] for i in range(len(ds))])
    with torch.no_grad():
        logits = model.eval()(images)
    assert topk_accuracy(logits, torch.from_numpy(test.labels), 1) == metrics["test/top1"]


def _stats(path):
    from excon.data.prepared import load_prepared

    d = load_prepared(path)
    return d.mean, d.std


def test_fit_linear_learns_a_separable_problem(tiny_config):
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 4
    y = torch.arange(3).repeat(40)
    x = centers[y] + torch.randn(len(y), 8) * 0.3
    cfg = tiny_config("probe.epochs=20")
    head, val_acc, epoch = fit_linear(x[:90], y[:90], x[90:], y[90:], 3, 0.1, cfg)
    assert val_acc == 1.0
    assert topk_accuracy(head(x[90:]), y[90:], 1) == 1.0
    assert 1 <= epoch <= 20


def test_topk():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([1, 2])
    assert topk_accuracy(logits, y, 1) == 0.5
    assert topk_accuracy(logits, y, 2) == 1.0
    assert topk_accuracy(logits, y, 5) == 1.0  # k clipped to the class count
