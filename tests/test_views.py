import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from excon.data.views import ViewDataset, build_transform, make_loader


def _images(n=8, size=12, channels=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_standard_view_is_only_normalisation():
    imgs = _images()
    ds = ViewDataset(imgs, np.arange(8), ["standard"], [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    (view,), label = ds[3]
    want = (
        torch.from_numpy(imgs[3]).permute(2, 0, 1).float() / 255
        - torch.tensor([0.5, 0.4, 0.3])[:, None, None]
    ) / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    assert torch.allclose(view, want, atol=1e-6)
    assert label == 3


def test_random_view_is_the_supcon_recipe():
    t = build_transform("random", (32, 32), [0.5] * 3, [0.5] * 3, channels=3)
    kinds = [type(x) for x in t.transforms]
    assert kinds[:2] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip]
    rrc = t.transforms[0]
    assert rrc.scale == (0.2, 1.0)
    jitter = t.transforms[2]
    assert isinstance(jitter, v2.RandomApply) and jitter.p == 0.8
    cj = jitter.transforms[0]
    assert (cj.brightness, cj.contrast, cj.saturation) == ((0.6, 1.4),) * 3
    assert cj.hue == (-0.1, 0.1)
    assert isinstance(t.transforms[3], v2.RandomGrayscale) and t.transforms[3].p == 0.2


def test_views_differ_and_grayscale_works():
    ds = ViewDataset(_images(channels=1), np.zeros(8), ["random", "random", "ce"], [0.5], [0.5])
    views, _ = ds[0]
    assert [v.shape for v in views] == [(1, 12, 12)] * 3
    assert not torch.equal(views[0], views[1])


def test_loader_replays_an_epoch_from_seed_and_epoch():
    ds = ViewDataset(_images(16), np.arange(16), ["random"], [0.5] * 3, [0.5] * 3)

    def epoch_batches(epoch):
        torch.manual_seed(epoch)
        return [
            (v[0].clone(), y.clone())
            for v, y in make_loader(ds, 4, train=True, seed=1, epoch=epoch)
        ]

    a, b, c = epoch_batches(2), epoch_batches(2), epoch_batches(3)
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        ViewDataset(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2), ["standard"], [0], [1])
    with pytest.raises(ValueError, match="unknown view kind"):
        build_transform("mixup", (4, 4), [0], [1], 1)


class _WorkerDraw(torch.utils.data.Dataset):
    """What a loader worker's augmentations would draw for each item."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> float:
        return torch.rand(()).item()


def test_loader_workers_of_different_ranks_draw_different_augmentations():
    draws = [
        torch.cat(
            list(make_loader(_WorkerDraw(), 2, train=True, num_workers=1, rank=r, world_size=2))
        )
        for r in (0, 1)
    ]
    assert not torch.allclose(draws[0], draws[1])
    again = make_loader(_WorkerDraw(), 2, train=True, num_workers=1, rank=1, world_size=2)
    assert torch.equal(torch.cat(list(again)), draws[1])  # still a function of (seed, epoch, rank)
