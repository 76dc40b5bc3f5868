"""Shared fixtures: a tiny prepared dataset written by the real writer, tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from excon.config import load_config
from excon.data.prepared import RawDataset, Split, write_prepared


def blob_images(n_per_class: int, num_classes: int, size: int, channels: int, seed: int):
    """Learnable synthetic images: class k is a bright square at a class-specific position."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(num_classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
            r, c = divmod(k, 2)
            y0, x0 = 2 + r * size // 3, 2 + c * size // 2
            img[y0 : y0 + size // 4, x0 : x0 + size // 4] = 220
            images.append(img)
            labels.append(k)
    return np.stack(images), np.array(labels, dtype=np.int64)


def make_prepared(out: Path, num_classes: int = 4, size: int = 16, channels: int = 1) -> Path:
    splits = {}
    for i, (name, n) in enumerate([("train", 24), ("val", 6), ("test", 6)]):
        images, labels = blob_images(n, num_classes, size, channels, seed=i)
        splits[name] = Split(images, labels, masks=(images[..., 0] > 100).astype(np.uint8))
    ds = RawDataset("blobs", [f"class{k}" for k in range(num_classes)], splits, {"kind": "test"})
    write_prepared(ds, out)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("data") / "blobs")


TINY = [
    "model.width=0.0625",
    "model.proj_dim=8",
    "train.batch_size=16",
    "train.epochs=3",
    "train.device=cpu",
    "optim.lr=0.05",
    "probe.epochs=5",
    "probe.batch_size=32",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config():
    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides])

    return make
