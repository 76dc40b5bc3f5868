"""Explanation quality of a classifier's Grad-CAM maps, batched on the device.

Explanations are Grad-CAM maps of the *predicted* class computed with the model in eval mode,
as the reference evaluates (DarrenZhang01/ExCon `util.eval_drop_increase`). "Removing" a pixel
sets all its channels to 0 in normalised image space, i.e. to the dataset mean colour, exactly
as `excon.saliency.mask_images` masks during training.

Faithful to the reference:
- keep the top `frac` (0.15) of pixels by saliency, `int(frac * H * W)` of them, the rest 0;
- Average Drop = mean max(0, o - p) / o and Increase in Confidence = mean [p > o], where o and p
  are the softmax probabilities of the predicted class on the original and the kept-pixels
  image. Both are returned as fractions in [0, 1] (the paper prints them x100).
Beyond the reference: deletion / insertion AUC (RISE) and the pointing game and Score-CAM's
energy-based pointing game against ground-truth foreground masks or boxes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from excon.saliency import normalise_maps

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _descending_order(maps: torch.Tensor) -> torch.Tensor:
    """[B, ...] maps -> [B, N] pixel indices by decreasing saliency. A stable sort breaks ties by
    pixel index, so the result does not depend on the device or the sort algorithm."""
    return torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """[B, ...] maps -> int64 ranks shaped like them: 0 on each image's most salient pixel."""
    order = _descending_order(maps)
    ranks = torch.arange(order.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ranks).view_as(maps)


def keep_top_fraction(maps: torch.Tensor, frac: float = 0.15) -> torch.Tensor:
    """Boolean mask shaped like `maps` ([B, 1, H, W]): True on exactly `int(frac * H * W)` pixels
    per image, the most salient ones (ties -> lower pixel index). `int` (not `round`) is the
    reference's count: 153 of 1024 pixels at 32 px."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    count = int(frac * maps[0].numel())
    return saliency_rank(maps) < count


def drop_increase_terms(
    p_orig: torch.Tensor, p_expl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample terms [B] of Average Drop (max(0, o - p) / o) and Increase ([p > o] as 0/1)."""
    # o is a softmax probability (> 0); the clamp only guards against float underflow.
    drop = (p_orig - p_expl).clamp_min(0) / p_orig.clamp_min(1e-12)
    return drop, (p_expl > p_orig).to(drop.dtype)


def average_drop_increase(p_orig: torch.Tensor, p_expl: torch.Tensor) -> tuple[float, float]:
    """(Average Drop, Increase in Confidence) as fractions in [0, 1] from [B] probabilities of the
    predicted class on the original (o) and explanation-masked (p) images. Lower drop and higher
    increase are better."""
    drop, increase = drop_increase_terms(p_orig, p_expl)
    return drop.mean().item(), increase.mean().item()


def trapezoid_auc(curves: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N] curves -> [B] areas by the trapezoid rule over x (default: N points evenly in
    [0, 1])."""
    if x is None:
        x = torch.linspace(0.0, 1.0, curves.shape[-1], device=curves.device, dtype=curves.dtype)
    return torch.trapezoid(curves, x.to(curves.dtype), dim=-1)


def _class_probs(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(images).float().softmax(dim=1).gather(1, classes[:, None]).squeeze(1)


@torch.no_grad()
def deletion_insertion_auc(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    steps: int = 16,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] deletion and insertion AUCs of `maps` ([B, 1, H, W]) for `classes` ([B]).

    Deletion removes pixels in decreasing saliency order in `steps` near-equal chunks, starting
    from the original image; insertion starts from the all-removed image (all 0 = the mean
    colour: RISE uses a blurred image, the mean colour is consistent with how the project masks)
    and inserts pixels in the same order. Each curve has `steps + 1` points (the start included)
    of the softmax probability of the class; the area is taken over the fraction of pixels
    changed, in [0, 1]. A good explanation has low deletion and high insertion AUC.

    All 2 * (steps + 1) * B variants go through the model as one flat stream, `chunk_size`
    images per forward pass to bound memory. The model is used in its current mode (eval).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch, pixels = images.shape[0], maps[0].numel()
    rank = saliency_rank(maps)  # [B, 1, H, W]
    # Pixels changed after each step: 0 .. pixels, near-equal chunks when steps does not divide.
    changed = torch.arange(steps + 1, device=images.device) * pixels // steps
    counts = torch.cat([changed, changed])  # deletion variants, then insertion variants
    inserting = torch.arange(counts.numel(), device=images.device) > steps
    probs = []
    for start in range(0, counts.numel() * batch, chunk_size):
        flat = torch.arange(
            start, min(start + chunk_size, counts.numel() * batch), device=images.device
        )
        variant, sample = flat // batch, flat % batch
        count = counts[variant].view(-1, 1, 1, 1)
        removed_first = rank[sample] < count  # the `count` most salient pixels
        keep = torch.where(inserting[variant].view(-1, 1, 1, 1), removed_first, ~removed_first)
        probs.append(_class_probs(model, images[sample] * keep.to(images.dtype), classes[sample]))
    curves = torch.cat(probs).view(2, steps + 1, batch).permute(0, 2, 1)  # [2, B, steps + 1]
    auc = trapezoid_auc(curves, changed.float() / pixels)
    return auc[0], auc[1]


def _flat_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    flat = masks.flatten(1).bool()
    if flat.shape != maps.flatten(1).shape:
        raise ValueError(f"masks {tuple(masks.shape)} do not match maps {tuple(maps.shape)}")
    return flat


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B] float: 1 when the map's argmax pixel (first one on ties) lies in the foreground mask
    ([B, H, W] bool/uint8), 0 when it does not, NaN when the mask is empty: such images are
    excluded from the mean (`nanmean`)."""
    flat = _flat_masks(maps, masks)
    hit = flat.gather(1, maps.flatten(1).argmax(dim=1, keepdim=True)).squeeze(1).float()
    return hit.masked_fill(~flat.any(dim=1), float("nan"))


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B] float: share of the (per-image min-max normalised, hence non-negative) map's energy
    that falls inside the mask (Score-CAM). NaN for an empty mask or a constant map, excluded
    from the mean like the pointing game's empty masks."""
    flat = _flat_masks(maps, masks)
    energy = normalise_maps(maps).flatten(1)
    score = (energy * flat).sum(dim=1) / energy.sum(dim=1)  # 0 / 0 = NaN for constant maps
    return score.masked_fill(~flat.any(dim=1), float("nan"))


def boxes_to_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 4] boxes (x0, y0, x1, y1), inclusive pixel coordinates as in Tiny ImageNet's
    `val_annotations.txt` -> [B, H, W] bool foreground masks (parts outside the image dropped)."""
    height, width = size
    x0, y0, x1, y1 = boxes.long().unbind(dim=1)
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    rows = (ys >= y0[:, None]) & (ys <= y1[:, None])  # [B, H]
    cols = (xs >= x0[:, None]) & (xs <= x1[:, None])  # [B, W]
    return rows[:, :, None] & cols[:, None, :]


def _progress(batches: Iterable[Batch]) -> Iterable[Batch]:
    # A live bar on a terminal only, as in training: logs get no carriage-return clutter.
    return tqdm(batches, desc="explanations", leave=False, disable=not sys.stderr.isatty())


def explanation_metrics(
    model: nn.Module,
    gradcam: Explainer,
    batches: Iterable[Batch],
    top_frac: float = 0.15,
    steps: int = 16,
    device: torch.device | str | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Explanation quality of `gradcam` (e.g. `excon.saliency.GradCam(model, layer)`) over
    `(images, labels, masks or None)` batches of normalised images.

    Returns means over all images of `expl/avg_drop`, `expl/increase` (fractions in [0, 1]),
    `expl/deletion_auc` (lower is better), `expl/insertion_auc` (higher is better); and, over
    the images with a non-empty foreground mask (and, for the energy game, a non-constant map),
    `expl/pointing_game` and `expl/energy_pointing_game`, present only when some batch had
    masks. The per-image values are `explanation_terms`."""
    return metrics_of_terms(
        explanation_terms(model, gradcam, batches, top_frac, steps, device, chunk_size)
    )


def metrics_of_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """`expl/<name>`: the NaN-skipping mean of each per-image term (0 / 0 = NaN when every
    image is undefined, e.g. every mask empty: undefined, not 0); one host read for all."""
    means = torch.stack([v.nansum() / (~v.isnan()).sum() for v in terms.values()]).tolist()
    return {f"expl/{name}": m for name, m in zip(terms, means, strict=True)}


def explanation_terms(
    model: nn.Module,
    gradcam: Explainer,
    batches: Iterable[Batch],
    top_frac: float = 0.15,
    steps: int = 16,
    device: torch.device | str | None = None,
    chunk_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per-image [N] `avg_drop`, `increase`, `deletion_auc`, `insertion_auc` and, when some batch
    has masks, `pointing_game` and `energy_pointing_game` (NaN where undefined; NaN too for the
    images of a batch without masks), on the device, in batch order.

    Explains the predicted class with the model in eval mode (its previous train/eval state is
    restored at the end). Labels are not used: explanations are of the prediction, right or
    wrong. Values stay on the device; the caller reads them once.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modes = {module: module.training for module in model.modules()}
    model.eval()
    per_batch: list[dict[str, torch.Tensor]] = []
    try:
        for images, _labels, masks in _progress(batches):
            images = images.to(device, non_blocking=True)
            per_batch.append(
                _batch_terms(model, gradcam, images, masks, top_frac, steps, chunk_size)
            )
    finally:
        for module, training in modes.items():
            module.training = training  # per module: mixed modes come back exactly
    if not per_batch:
        raise ValueError("explanation_metrics: no batches to evaluate")
    names = dict.fromkeys(name for batch in per_batch for name in batch)
    # pointing games exist only for batches with masks: NaN for the others keeps rows aligned
    return {
        name: torch.cat(
            [b.get(name, torch.full_like(b["avg_drop"], float("nan"))) for b in per_batch]
        )
        for name in names
    }


def _batch_terms(
    model: nn.Module,
    gradcam: Explainer,
    images: torch.Tensor,
    masks: torch.Tensor | None,
    top_frac: float,
    steps: int,
    chunk_size: int,
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        probs = model(images).float().softmax(dim=1)
    predicted = probs.argmax(dim=1)
    p_orig = probs.gather(1, predicted[:, None]).squeeze(1)
    maps = gradcam(images, predicted)
    keep = keep_top_fraction(maps, top_frac)
    with torch.no_grad():
        p_expl = _class_probs(model, images * keep.to(images.dtype), predicted)
    drop, increase = drop_increase_terms(p_orig, p_expl)
    deletion, insertion = deletion_insertion_auc(model, images, maps, predicted, steps, chunk_size)
    out = {"avg_drop": drop, "increase": increase}
    out |= {"deletion_auc": deletion, "insertion_auc": insertion}
    if masks is not None:
        masks = masks.to(images.device, non_blocking=True)
        out["pointing_game"] = pointing_game(maps, masks)
        out["energy_pointing_game"] = energy_pointing_game(maps, masks)
    return out
