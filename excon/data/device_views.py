"""The views of `excon.data.views`, made on the training device for whole batches at once.

`data.augment: device` keeps the prepared uint8 images on the device and augments each batch
with kornia (per-sample random parameters, batched kernels) instead of DataLoader workers doing
per-image torchvision work: on a GPU the input pipeline then stops being the bottleneck. The
same kinds and parameters as the loader path (RandomResizedCrop 0.2-1, flip, ColorJitter
0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2); the pixels differ in interpolation detail, so the
faithful default stays `data.augment: loader`. Batches come in the loader path's order (the
same samplers), so both paths see each epoch's images identically ordered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from excon.data.views import VIEW_KINDS, check_images, make_loader


def build_augmentation(
    kind: str, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], channels: int
) -> nn.Module:
    """One view kind as a batched module on float images in [0, 1] (N, C, H, W)."""
    normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))
    if kind == "standard":
        return nn.Sequential(K.Resize(size, antialias=True), normalize)
    crop = [K.RandomResizedCrop(size, scale=(0.2, 1.0)), K.RandomHorizontalFlip()]
    if kind == "ce":
        return nn.Sequential(*crop, normalize)
    if kind == "random":
        if channels == 1:  # saturation, hue and grayscale are identities on one channel
            color: list[nn.Module] = [K.ColorJiggle(0.4, 0.4, p=0.8)]
        else:  # ColorJiggle: torchvision's ColorJitter semantics (random order of the four)
            color = [K.ColorJiggle(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
        return nn.Sequential(*crop, *color, normalize)
    raise ValueError(f"unknown view kind {kind!r} (allowed: {', '.join(VIEW_KINDS)})")


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class DeviceBatches:
    """Yields ([view_1, ..., view_k], labels) like a DataLoader over ViewDataset, with the
    images held on `device` and every view made there for the whole batch."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        kinds: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
    ) -> None:
        check_images(images)
        # uint8 NCHW on the device: 150 MB for CIFAR-100's training split
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        size = (self.images.shape[2], self.images.shape[3])
        self.augment = [
            build_augmentation(k, size, mean, std, self.images.shape[1]).to(device) for k in kinds
        ]
        self.order: torch.utils.data.DataLoader | None = None

    def epoch(self, batch_size: int, *, train: bool, **loader_kw: int) -> DeviceBatches:
        """Set this epoch's sample order: make_loader's, with the same arguments."""
        kw = {k: v for k, v in loader_kw.items() if k in ("seed", "epoch", "rank", "world_size")}
        self.order = make_loader(_Indices(len(self.labels)), batch_size, train=train, **kw)
        return self

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        for idx in self._order():
            idx = idx.to(self.images.device)
            batch = self.images[idx].float().div_(255)
            yield [aug(batch) for aug in self.augment], self.labels[idx]

    def _order(self) -> torch.utils.data.DataLoader:
        if self.order is None:
            raise RuntimeError("call .epoch(batch_size, train=...) before iterating")
        return self.order
