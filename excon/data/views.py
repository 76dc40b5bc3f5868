"""Augmented views of prepared uint8 images, as the reference (SupContrast / ExCon) builds them.

View kinds:
- "standard": resize + normalise only (ExCon's saliency view, evaluation, probing);
- "random":   the SupCon augmentation: RandomResizedCrop(scale 0.2-1), horizontal flip,
              ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2;
- "ce":       the cross-entropy baseline's augmentation: RandomResizedCrop(0.2-1) + flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from excon.seeds import stream_seed

VIEW_KINDS = ("standard", "random", "ce")


def build_transform(
    kind: str, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], channels: int
) -> v2.Transform:
    """Transform for one view kind, on a uint8 [C, H, W] tensor."""
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if kind == "standard":
        return v2.Compose([v2.Resize(list(size), antialias=True), *normalize])
    crop = [
        v2.RandomResizedCrop(list(size), scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if kind == "ce":
        return v2.Compose([*crop, *normalize])
    if kind == "random":
        color: list[v2.Transform] = [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        ]
        # Saturation, hue and grayscale are identities on 1-channel images; torchvision's
        # grayscale conversion would reject them, so those steps are only built for RGB.
        if channels == 1:
            color = [v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8)]
        else:
            color.append(v2.RandomGrayscale(p=0.2))
        return v2.Compose([*crop, *color, *normalize])
    raise ValueError(f"unknown view kind {kind!r} (allowed: {', '.join(VIEW_KINDS)})")


def check_images(images: np.ndarray) -> None:
    """The prepared format's images: uint8 [N, H, W, C]."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")


class ViewDataset(Dataset):
    """Yields ([view_1, ..., view_k], label) for uint8 NHWC images held in memory."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        kinds: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        check_images(images)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        size = (self.images.shape[2], self.images.shape[3])
        channels = self.images.shape[1]
        self.transforms = [build_transform(k, size, mean, std, channels) for k in kinds]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        image = self.images[i]
        return [t(image) for t in self.transforms], self.labels[i]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader whose shuffling and worker seeds depend only on (seed, epoch), so an epoch
    replays identically after a resume. With world_size > 1 (DDP), a training loader yields
    this rank's shard of each epoch's permutation (DistributedSampler)."""
    generator = torch.Generator().manual_seed(stream_seed(seed, "shuffle", epoch))
    sampler = None
    if train and world_size > 1:
        # The sampler shuffles; the generator only seeds the workers, which augment: keyed by
        # rank, or worker w of every rank would draw the same crops for its batches.
        generator.manual_seed(stream_seed(seed, "workers", epoch, rank))
        sampler = DistributedSampler(
            dataset,
            world_size,
            rank,
            shuffle=True,
            seed=stream_seed(seed, "shuffle"),
            drop_last=True,
        )
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )
