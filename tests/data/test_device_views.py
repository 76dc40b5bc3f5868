"""train.augment=device: the views made for whole batches on the device (kornia), in the loader
path's order, with the loader path's standard view, and per-sample randomness."""

import numpy as np
import pytest
import torch

from excon.data.device_views import DeviceBatches, build_augmentation
from excon.data.views import ViewDataset, make_loader

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def images(n=24, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
        rng.integers(0, 5, n).astype(np.int64),
    )


def test_standard_view_equals_the_loader_path():
    x, y = images()
    dev = DeviceBatches(x, y, ["standard"], MEAN, STD, torch.device("cpu"))
    cpu = make_loader(ViewDataset(x, y, ["standard"], MEAN, STD), 8, train=False)
    for (dv, dl), (cv, cl) in zip(dev.epoch(8, train=False), cpu, strict=True):
        assert torch.equal(dl, cl)
        torch.testing.assert_close(dv[0], cv[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (0, 2), (1, 2)])
def test_batches_come_in_the_loader_order(rank, world):
    x, y = images(n=40)
    y = np.arange(40)  # labels = indices, to compare orders
    kw = {"seed": 3, "epoch": 2, "rank": rank, "world_size": world}
    dev = DeviceBatches(x, y, ["ce"], MEAN, STD, torch.device("cpu")).epoch(8, train=True, **kw)
    cpu = make_loader(ViewDataset(x, y, ["ce"], MEAN, STD), 8, train=True, **kw)
    assert len(dev) == len(cpu)
    assert [lab.tolist() for _, lab in dev] == [lab.tolist() for _, lab in cpu]


def test_random_views_are_random_per_sample_and_stay_in_range():
    x, _ = images(n=1)
    x = np.repeat(x, 16, axis=0)  # one image, sixteen times in one batch
    dev = DeviceBatches(x, np.zeros(16, np.int64), ["random", "random"], MEAN, STD, "cpu")
    torch.manual_seed(0)
    (v1, v2), _ = next(iter(dev.epoch(16, train=True)))
    assert v1.shape == (16, 3, 16, 16) and v1.dtype == torch.float32
    assert len({tuple(v.flatten()[:32].tolist()) for v in v1}) == 16  # no two samples alike
    assert not torch.equal(v1, v2)
    pixels = v1 * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_one_channel_images_and_unknown_kinds():
    x, y = images(channels=1)
    dev = DeviceBatches(x, y, ["random"], [0.5], [0.25], torch.device("cpu"))
    (v,), _ = next(iter(dev.epoch(8, train=True)))
    assert v.shape == (8, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown view kind"):
        build_augmentation("mixup", (16, 16), MEAN, STD, 3)
    with pytest.raises(RuntimeError, match="epoch"):
        next(iter(DeviceBatches(x, y, ["ce"], [0.5], [0.25], torch.device("cpu"))))


def test_pretrain_with_device_augmentation(prepared, tiny_config, tmp_path):
    from excon.train import pretrain

    cfg = tiny_config("method.name=excon", "method.exp_epochs=1", "train.epochs=1",
                      "train.augment=device")  # fmt: skip
    summary = pretrain(cfg, prepared, tmp_path / "run")
    assert 0 <= summary["val/top1"] <= 1 and 0 <= summary["train/accept_rate"] <= 1
