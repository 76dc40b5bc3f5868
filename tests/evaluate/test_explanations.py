import math

import numpy as np
import pytest
import torch
from torch import nn

from excon.evaluate.explanations import (
    average_drop_increase,
    boxes_to_masks,
    deletion_insertion_auc,
    energy_pointing_game,
    explanation_metrics,
    explanation_terms,
    keep_top_fraction,
    metrics_of_terms,
    pointing_game,
    saliency_rank,
    trapezoid_auc,
)
from excon.models import ExConNet
from excon.saliency import GradCam

KEYS = {"expl/avg_drop", "expl/increase", "expl/deletion_auc", "expl/insertion_auc"}
MASK_KEYS = {"expl/pointing_game", "expl/energy_pointing_game"}


# --- Average Drop / Increase in Confidence ------------------------------------------------------


def test_unchanged_image_has_no_drop_and_no_increase():
    o = torch.tensor([0.3, 0.9, 0.5])
    assert average_drop_increase(o, o.clone()) == (0.0, 0.0)


def test_drop_increase_hand_table():
    o = torch.tensor([0.5, 0.8, 0.2])
    p = torch.tensor([0.25, 0.9, 0.1])
    # drops: 0.25/0.5 = 0.5, 0 (p > o clips), 0.1/0.2 = 0.5; increase only on the second row
    drop, increase = average_drop_increase(o, p)
    assert drop == pytest.approx(1 / 3)
    assert increase == pytest.approx(1 / 3)


# --- keep_top_fraction ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "count"), [(16, 38), (32, 153), (64, 614)])
def test_keep_top_fraction_keeps_the_reference_count_of_top_pixels(size, count):
    torch.manual_seed(0)
    maps = torch.randn(4, 1, size, size)
    keep = keep_top_fraction(maps, 0.15)
    assert keep.shape == maps.shape and keep.dtype == torch.bool
    assert keep.flatten(1).sum(1).tolist() == [count] * 4  # int(0.15 * H * W), as the reference
    flat, kept = maps.flatten(1), keep.flatten(1)
    for m, k in zip(flat, kept, strict=True):
        assert m[k].min() > m[~k].max()
    # the reference's numpy selection: argsort(-cam)[: int(threshold * N)]
    want = np.argsort(-flat.numpy(), axis=1)[:, :count]
    got = np.sort(np.nonzero(kept.numpy())[1].reshape(4, count), axis=1)
    assert (np.sort(want, axis=1) == got).all()


def test_keep_top_fraction_breaks_ties_by_pixel_index():
    keep = keep_top_fraction(torch.zeros(2, 1, 4, 4), 0.25)
    assert keep.flatten(1)[:, :4].all() and not keep.flatten(1)[:, 4:].any()
    assert saliency_rank(torch.tensor([[1.0, 3.0, 3.0, 2.0]])).tolist() == [[3, 0, 1, 2]]


# --- deletion / insertion ---------------------------------------------------------------------


class OnePixel(nn.Module):
    """Two classes; the class-0 logit is 100 x the value of channel 0 at pixel (1, 2): p = 1 with
    that pixel at 1, p = 0.5 once it is removed (0), whatever the other pixels hold."""

    def forward(self, x):
        v = x[:, 0, 1, 2] * 100
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def one_pixel_case():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 4, 4)
    images[:, 0, 1, 2] = 1.0
    maps = torch.rand(2, 1, 4, 4)
    maps[0, 0, 1, 2] = 10.0  # the decisive pixel ranked first
    maps[1, 0, 1, 2] = -10.0  # ... and last
    return images, maps, torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_deletion_insertion_one_pixel_model(chunk_size):
    images, maps, classes = one_pixel_case()
    deletion, insertion = deletion_insertion_auc(
        OnePixel(), images, maps, classes, steps=4, chunk_size=chunk_size
    )
    # ranked first: deletion curve 1, .5, .5, .5, .5 -> 0.25 * 0.75 + 0.75 * 0.5 = 0.5625;
    # ranked last: 1, 1, 1, 1, .5 -> 0.9375. Insertion mirrors it (starts from the mean colour).
    assert deletion.tolist() == pytest.approx([0.5625, 0.9375])
    assert insertion.tolist() == pytest.approx([0.9375, 0.5625])


def test_deletion_with_steps_not_dividing_the_pixels():
    images, maps, classes = one_pixel_case()
    deletion, insertion = deletion_insertion_auc(OnePixel(), images, maps, classes, steps=3)
    # 16 pixels in 3 steps: 0, 5, 10, 16 changed -> x = 0, 5/16, 10/16, 1
    assert deletion[0].item() == pytest.approx(5 / 16 * 0.75 + 11 / 16 * 0.5)
    assert insertion[1].item() == pytest.approx(10 / 16 * 0.5 + 6 / 16 * 0.75)


def naive_curves(model, image, cam, cls, steps):
    """One image at a time, straight from the definition."""
    order = torch.sort(cam.flatten(), descending=True, stable=True).indices
    n = cam.numel()
    dele, ins = [], []
    for s in range(steps + 1):
        k = s * n // steps
        removed = torch.zeros(n, dtype=torch.bool)
        removed[order[:k]] = True
        removed = removed.view(1, *cam.shape[-2:])
        for keep, out in ((~removed, dele), (removed, ins)):
            logits = model((image * keep)[None])
            out.append(logits.softmax(1)[0, cls].item())
    return dele, ins


def test_deletion_insertion_matches_a_per_image_loop():
    torch.manual_seed(1)
    model = ExConNet(num_classes=3, arch="resnet18", width=0.0625, in_channels=3).eval()
    images, maps = torch.randn(3, 3, 8, 8), torch.randn(3, 1, 8, 8)
    classes = torch.tensor([0, 2, 1])
    deletion, insertion = deletion_insertion_auc(model, images, maps, classes, 5, chunk_size=7)
    x = torch.tensor([s * 64 // 5 / 64 for s in range(6)])
    with torch.no_grad():
        for i in range(3):
            d, n = naive_curves(model, images[i], maps[i], classes[i], 5)
            assert deletion[i].item() == pytest.approx(torch.trapezoid(torch.tensor(d), x).item())
            assert insertion[i].item() == pytest.approx(torch.trapezoid(torch.tensor(n), x).item())


def test_trapezoid_auc_on_known_curves():
    assert trapezoid_auc(torch.linspace(0, 1, 5)[None]).tolist() == pytest.approx([0.5])
    # y = x^2 sampled at 0, 0.5, 1: 0.5 * (0 + 0.25) / 2 + 0.5 * (0.25 + 1) / 2 = 0.375
    assert trapezoid_auc(torch.tensor([[0.0, 0.25, 1.0]])).tolist() == pytest.approx([0.375])
    uneven = trapezoid_auc(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0.0, 0.75, 1.0]))
    assert uneven.tolist() == pytest.approx([0.875])


# --- pointing games, boxes ----------------------------------------------------------------------


def test_pointing_game_hit_miss_and_empty_mask():
    maps = torch.zeros(3, 1, 3, 3)
    maps[0, 0, 0, 0] = 1.0  # peak inside the mask -> hit
    maps[1, 0, 2, 2] = 1.0  # peak outside -> miss
    maps[2, 0, 1, 1] = 1.0  # empty mask -> excluded (NaN)
    masks = torch.zeros(3, 3, 3, dtype=torch.uint8)
    masks[0, :2, :2] = 1
    masks[1, :2, :2] = 1
    got = pointing_game(maps, masks)
    assert got[:2].tolist() == [1.0, 0.0] and math.isnan(got[2].item())
    assert got.nanmean().item() == 0.5


def test_energy_pointing_game():
    maps = torch.zeros(3, 1, 2, 4)
    maps[0, 0, :, 1] = 5.0  # all energy in column 1 (after min-max: 1 there, 0 elsewhere)
    maps[1, 0] = torch.tensor([[1.0, 2.0, 2.0, 1.0], [0.0, 3.0, 3.0, 0.0]])  # mirror-symmetric
    maps[2, 0] = 7.0  # constant map: no energy anywhere -> NaN
    masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    masks[1, :, :2] = True  # left half of a symmetric map
    masks[2, :, :2] = True
    got = energy_pointing_game(maps, masks)
    assert got[:2].tolist() == pytest.approx([1.0, 0.5])
    assert math.isnan(got[2].item())


def test_pointing_games_reject_mismatched_masks():
    with pytest.raises(ValueError, match="do not match"):
        pointing_game(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 3))


def test_boxes_to_masks_inclusive_and_clipped():
    boxes = torch.tensor([[1, 0, 2, 1], [3, 2, 10, 10]])
    got = boxes_to_masks(boxes, (3, 4))
    want0 = [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    want1 = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert got.dtype == torch.bool
    assert got.int().tolist() == [want0, want1]


# --- the driver -------------------------------------------------------------------------------


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return ExConNet(num_classes=3, arch="resnet18", width=0.0625, in_channels=3)


def tiny_batches(with_masks):
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (5, 3):
        images = torch.randn(n, 3, 16, 16, generator=g)
        labels = torch.randint(0, 3, (n,), generator=g)
        masks = boxes_to_masks(torch.tensor([[2, 2, 9, 12]] * n), (16, 16)) if with_masks else None
        out.append((images, labels, masks))
    return out


def in_unit_interval(metrics):
    return all(0.0 <= v <= 1.0 for v in metrics.values())


def test_explanation_metrics_with_masks_and_mode_restored(tiny_net):
    tiny_net.train()
    tiny_net.projector.eval()  # a mixed state must come back as it was
    gradcam = GradCam(tiny_net, "layer2[1].conv2")
    metrics = explanation_metrics(tiny_net, gradcam, tiny_batches(True), steps=4, chunk_size=16)
    assert set(metrics) == KEYS | MASK_KEYS
    assert in_unit_interval(metrics)
    assert tiny_net.training and tiny_net.encoder.training and not tiny_net.projector.training

    # the same numbers from the public pieces, on all 8 images at once (eval mode, predicted class)
    tiny_net.eval()
    images = torch.cat([b[0] for b in tiny_batches(True)])
    masks = torch.cat([b[2] for b in tiny_batches(True)])
    with torch.no_grad():
        probs = tiny_net(images).softmax(1)
    pred = probs.argmax(1)
    maps = gradcam(images, pred)
    with torch.no_grad():
        p = tiny_net(images * keep_top_fraction(maps)).softmax(1)
    drop, increase = average_drop_increase(probs[range(8), pred], p[range(8), pred])
    deletion, insertion = deletion_insertion_auc(tiny_net, images, maps, pred, steps=4)
    assert metrics["expl/avg_drop"] == pytest.approx(drop, abs=1e-5)
    assert metrics["expl/increase"] == pytest.approx(increase)
    assert metrics["expl/deletion_auc"] == pytest.approx(deletion.mean().item(), abs=1e-5)
    assert metrics["expl/insertion_auc"] == pytest.approx(insertion.mean().item(), abs=1e-5)
    assert metrics["expl/pointing_game"] == pytest.approx(pointing_game(maps, masks).mean().item())
    energy = energy_pointing_game(maps, masks).mean().item()
    assert metrics["expl/energy_pointing_game"] == pytest.approx(energy, abs=1e-5)


def test_explanation_metrics_without_masks(tiny_net):
    tiny_net.eval()
    gradcam = GradCam(tiny_net, "layer2[1].conv2")
    metrics = explanation_metrics(tiny_net, gradcam, tiny_batches(False), steps=2, device="cpu")
    assert set(metrics) == KEYS
    assert in_unit_interval(metrics)
    assert not tiny_net.training


def test_explanation_metrics_needs_batches(tiny_net):
    with pytest.raises(ValueError, match="no batches"):
        explanation_metrics(tiny_net, GradCam(tiny_net, "layer2[1].conv2"), [])


TERMS = ("avg_drop", "increase", "deletion_auc", "insertion_auc")
MASK_TERMS = ("pointing_game", "energy_pointing_game")


def test_explanation_terms_are_per_image_and_nan_where_a_batch_had_no_mask(tiny_net):
    tiny_net.eval()
    gradcam = GradCam(tiny_net, "layer2[1].conv2")
    with_masks, without = tiny_batches(True), tiny_batches(False)
    terms = explanation_terms(tiny_net, gradcam, [with_masks[0], without[1]], steps=2)
    assert {k: v.shape for k, v in terms.items()} == {k: (8,) for k in (*TERMS, *MASK_TERMS)}
    assert not terms["pointing_game"][:5].isnan().any()
    assert terms["pointing_game"][5:].isnan().all()  # the 3 images of the maskless batch
    # the metrics are the NaN-skipping means of the terms
    metrics = metrics_of_terms(terms)
    assert metrics["expl/pointing_game"] == pytest.approx(terms["pointing_game"][:5].mean().item())
    assert metrics["expl/avg_drop"] == pytest.approx(terms["avg_drop"].mean().item())
