import json

import pytest
import torch
from safetensors.torch import load_file

from excon import artifacts, train
from excon.config import ConfigError
from excon.methods import get_method
from excon.train import ResumeError, epoch_lr, pretrain


def _weights(run_dir):
    return load_file(str(run_dir / artifacts.MODEL_WEIGHTS))


@pytest.mark.parametrize(
    "overrides",
    [
        ("method.name=supcon",),  # head trained in its own epoch, two optimisers
        ("method.name=supcon", "method.head_training=online"),
        ("method.name=ce", "optim.warmup_epochs=1"),
        ("method.name=excon", "method.exp_epochs=2"),  # SupCon epoch 1, masking from epoch 2
    ],
)
def test_resume_gives_the_same_weights(prepared, tiny_config, tmp_path, monkeypatch, overrides):
    cfg = tiny_config(*overrides)
    full = tmp_path / "full"
    pretrain(cfg, prepared, full)

    # Kill the second run right after its first checkpoint is on disk.
    real_write_jsonl = artifacts.write_jsonl

    def killed(*args, **kwargs):
        real_write_jsonl(*args, **kwargs)
        raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(train.artifacts, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, prepared, part)
    monkeypatch.setattr(train.artifacts, "write_jsonl", real_write_jsonl)
    assert artifacts.load_checkpoint(part / train.CHECKPOINT)["epoch"] == 1
    assert not (part / artifacts.MODEL_WEIGHTS).exists()

    pretrain(cfg, prepared, part, resume=True)
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (part / train.METRICS_LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    full_log = (full / train.METRICS_LOG).read_text().splitlines()
    assert [json.loads(x)["train/loss"] for x in full_log] == [r["train/loss"] for r in log]


def test_training_changes_weights_and_logs(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=supcon")
    torch.manual_seed(cfg.train.seed)
    summary = pretrain(cfg, prepared, tmp_path / "run")
    assert summary["epochs"] == 3
    for key in ("train/loss", "train/images_per_s", "head/acc", "val/top1", "val/top5"):
        assert key in summary
    assert 0 <= summary["val/top1"] <= summary["val/top5"] <= 1
    ckpt = artifacts.load_checkpoint(tmp_path / "run" / train.CHECKPOINT)
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3
    model, meta = artifacts.load_model(tmp_path / "run")
    assert meta["method"] == "supcon" and meta["num_classes"] == 4
    assert torch.equal(model.state_dict()["classifier.weight"], ckpt["model"]["classifier.weight"])


def test_refuses_to_overwrite_or_resume_with_other_params(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=1")
    pretrain(cfg, prepared, tmp_path / "run")
    with pytest.raises(ResumeError, match="pass --resume"):
        pretrain(cfg, prepared, tmp_path / "run")
    with pytest.raises(ResumeError, match=r"other parameters \(optim\.lr\)"):
        pretrain(
            tiny_config("method.name=ce", "train.epochs=1", "optim.lr=0.1"),
            prepared,
            tmp_path / "run",
            resume=True,
        )
    # Resuming a finished run is a no-op that rewrites the same final model.
    before = _weights(tmp_path / "run")
    pretrain(cfg, prepared, tmp_path / "run", resume=True)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batch_larger_than_data_is_a_clear_error(prepared, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="larger than the training split"):
        pretrain(tiny_config("train.batch_size=1000"), prepared, tmp_path / "run")


def test_lr_schedule_matches_supcontrast():
    from excon.config import load_config

    cfg = load_config(None, ["train.epochs=10", "optim.lr=0.5", "optim.min_lr_ratio=0.001"])
    eta_min = 0.5e-3
    # epoch e (0-based) uses the reference's 1-based cosine position e + 1
    assert epoch_lr(cfg, 0, 0, 5) == pytest.approx(
        eta_min + (0.5 - eta_min) * (1 + torch.cos(torch.tensor(torch.pi / 10)).item()) / 2
    )
    assert epoch_lr(cfg, 9, 3, 5) == pytest.approx(eta_min)
    warm = load_config(None, ["train.epochs=10", "optim.warmup_epochs=2", "optim.warmup_from=0.01"])
    assert epoch_lr(warm, 0, 0, 5) == pytest.approx(0.01)
    # Warm-up climbs towards the cosine value at epoch `warmup_epochs` (the reference's
    # warmup_to) and is followed by the cosine at the next 1-based position.
    eta_min = 0.5e-3

    def cosine(e):
        return (
            eta_min + (0.5 - eta_min) * (1 + torch.cos(torch.tensor(torch.pi * e / 10)).item()) / 2
        )

    last_warm = epoch_lr(warm, 1, 4, 5)
    assert 0.01 < last_warm < cosine(2)
    assert last_warm == pytest.approx(0.01 + (9 / 10) * (cosine(2) - 0.01))
    assert epoch_lr(warm, 2, 0, 5) == pytest.approx(cosine(3))


def test_excon_run_writes_saliency_grids(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=excon", "method.exp_epochs=2", "method.grid_images=4")
    pretrain(cfg, prepared, tmp_path / "run")
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figures == [
        "saliency_epoch_001.png",
        "saliency_epoch_002.png",
        "saliency_epoch_003.png",
        "training.png",
    ]
    assert (tmp_path / "run" / "figures" / "saliency_epoch_003.png").read_bytes()[:4] == b"\x89PNG"
    log = [json.loads(x) for x in (tmp_path / "run" / train.METRICS_LOG).read_text().splitlines()]
    assert "train/accept_rate" not in log[0]  # epoch 1: SupCon phase
    assert 0 <= log[1]["train/accept_rate"] <= 1
    # every rejected masked view became one background negative (batch 16, negative_pair on)
    assert log[1]["train/backgrounds"] == pytest.approx(16 * (1 - log[1]["train/accept_rate"]))


def test_auto_resume_starts_over_when_training_parameters_change(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=1")
    pretrain(cfg, prepared, tmp_path / "run")
    # probe/eval settings are not training parameters: a strict resume accepts them
    pretrain(
        tiny_config("method.name=ce", "train.epochs=1", "probe.epochs=9"),
        prepared,
        tmp_path / "run",
        resume=True,
    )
    changed = tiny_config("method.name=ce", "train.epochs=1", "optim.lr=0.2")
    summary = pretrain(changed, prepared, tmp_path / "run", resume="auto")
    ckpt = artifacts.load_checkpoint(tmp_path / "run" / train.CHECKPOINT)
    assert ckpt["config"]["optim"]["lr"] == 0.2 and summary["epochs"] == 1


def test_resume_refuses_changed_code_or_data_and_auto_starts_over(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=1")
    run = tmp_path / "run"
    pretrain(cfg, prepared, run)
    ckpt = artifacts.load_checkpoint(run / train.CHECKPOINT)
    ckpt["fingerprint"]["code"] = "older code"
    artifacts.save_checkpoint(run / train.CHECKPOINT, ckpt)
    with pytest.raises(ResumeError, match="the excon code changed"):
        pretrain(cfg, prepared, run, resume=True)
    pretrain(cfg, prepared, run, resume="auto")  # DVC's mode: retrain
    fresh = artifacts.load_checkpoint(run / train.CHECKPOINT)
    assert fresh["fingerprint"]["code"] != "older code"


def test_a_checkpoint_of_another_process_count_is_obsolete(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=1")
    run = tmp_path / "run"
    pretrain(cfg, prepared, run)
    ckpt = artifacts.load_checkpoint(run / train.CHECKPOINT)
    assert ckpt["fingerprint"]["world_size"] == "1"
    ckpt["fingerprint"]["world_size"] = "4"  # as if trained by a 4-GPU job
    artifacts.save_checkpoint(run / train.CHECKPOINT, ckpt)
    with pytest.raises(ResumeError, match="trained on 4 processes, not 1"):
        pretrain(cfg, prepared, run, resume=True)


def test_truncated_checkpoint_is_a_clear_error(prepared, tiny_config, tmp_path):
    cfg = tiny_config("method.name=ce", "train.epochs=1")
    pretrain(cfg, prepared, tmp_path / "run")
    (tmp_path / "run" / train.CHECKPOINT).write_bytes(b"")
    with pytest.raises(ResumeError, match="unreadable"):
        pretrain(cfg, prepared, tmp_path / "run", resume=True)
    assert pretrain(cfg, prepared, tmp_path / "run", resume="auto")["epochs"] == 1


def test_compiled_encoder_trains_like_the_eager_one(prepared, tiny_config, tmp_path):
    """train.compile: the same first-step loss as eager, and the saved weights keep their names
    (no `_orig_mod.` prefix); excon, whose Grad-CAM hooks do not survive it, is refused."""
    from safetensors.torch import load_file

    sets = ("method.name=supcon", "train.epochs=1", "train.max_steps_per_epoch=1")
    eager = pretrain(tiny_config(*sets), prepared, tmp_path / "eager")
    compiled = pretrain(tiny_config(*sets, "train.compile=true"), prepared, tmp_path / "compiled")
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4)
    a = load_file(tmp_path / "eager" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "model.safetensors")
    assert a.keys() == b.keys()
    with pytest.raises(ConfigError, match=r"train\.compile is not available for excon"):
        pretrain(tiny_config("method.name=excon", "train.compile=true"), prepared, tmp_path / "x")


def test_classifier_augment_off_gives_the_classifier_standard_views(
    prepared, tiny_config, tmp_path
):
    on = tiny_config("method.name=ce")
    off = tiny_config("method.name=ce", "train.classifier_augment=false")
    assert train.view_kinds(get_method("ce"), on) == (["ce"], ["ce"])
    assert train.view_kinds(get_method("ce"), off) == (["standard"], ["standard"])
    # the contrastive views are the reference's whatever the setting; only the head's change
    assert train.view_kinds(get_method("excon"), off) == (
        ["standard", "random", "random"],
        ["standard"],
    )
    summary = pretrain(
        tiny_config("method.name=supcon", "train.epochs=1", "train.classifier_augment=false"),
        prepared,
        tmp_path / "run",
    )
    assert summary["epochs"] == 1


def test_reference_protocol_trains_on_all_of_train_and_labels_test_selection(
    prepared, tiny_config, tmp_path
):
    """study.protocol=reference (the authors' --validation=0): no val split, the test set scored
    after every epoch, the best epoch recorded as selected on test beside the last one; the
    probe selects on test and says so."""
    import numpy as np

    from excon.data.prepared import RawDataset, Split, load_prepared, write_prepared
    from excon.evaluate.stage import selected_on_test
    from excon.probe import probe
    from tests.conftest import blob_images

    splits = {
        name: Split(*blob_images(n, 4, 16, 1, seed=n)) for name, n in (("train", 24), ("test", 6))
    }
    splits["val"] = Split(np.zeros((0, 16, 16, 1), np.uint8), np.zeros(0, np.int64))
    data = tmp_path / "data"
    write_prepared(RawDataset("blobs", list("abcd"), splits, {"val_fraction": 0}), data)
    assert len(load_prepared(data).split("val").labels) == 0
    cfg = tiny_config(
        "method.name=ce", "train.epochs=3", "study.protocol=reference", "data.val_fraction=0"
    )
    with pytest.raises(ConfigError, match=r"study\.protocol=heldout selects on a val split"):
        pretrain(tiny_config("method.name=ce"), data, tmp_path / "no")  # no val to select on
    with pytest.raises(ConfigError, match=r"holds a val split of 24 images; prepare it with"):
        pretrain(cfg, prepared, tmp_path / "no")  # reference: nothing held out of train
    summary = pretrain(cfg, data, tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / train.METRICS_LOG).open()]
    assert all("test/top1" in r and "val/top1" not in r for r in history)
    best = max(history, key=lambda r: (r["test/top1"], -r["epoch"]))
    expected = {"epoch": best["epoch"], "top1": best["test/top1"], "selected_on": "test"}
    _, meta = artifacts.load_model(tmp_path / "run")
    assert meta["protocol"] == "reference" and meta["online_best"] == expected
    assert summary["online_best"] == expected and summary["test/top1"] == history[-1]["test/top1"]
    assert selected_on_test(meta) == {
        "online/top1_best_epoch": best["test/top1"],
        "online/best_epoch": best["epoch"],
    }
    metrics = probe(cfg, data, tmp_path / "run")
    assert metrics["probe/selected_on"] == "test" and "val/top1" not in metrics
    assert metrics["test/top1"] >= metrics["test/top1_last_epoch"]  # best of epochs incl. last
    assert np.isfinite(metrics["test/top1_last_epoch"])
