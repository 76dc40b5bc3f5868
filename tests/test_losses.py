import math

import pytest
import torch
import torch.nn.functional as F

from excon.losses import supcon_loss


def loop_supcon(features, labels, temperature, base_temperature):
    """Direct per-anchor implementation of L_out (Khosla et al., eq. 2), view-major order."""
    batch, views, _ = features.shape
    z = [features[i % batch, i // batch] for i in range(batch * views)]
    y = [int(labels[i % batch]) if labels is not None else i % batch for i in range(batch * views)]
    total = 0.0
    for a in range(len(z)):
        others = [p for p in range(len(z)) if p != a]
        denom = sum(math.exp(float(z[a] @ z[p]) / temperature) for p in others)
        pos = [p for p in others if y[p] == y[a]]
        if not pos:
            continue  # contributes 0, still counted in the mean
        s = sum(float(z[a] @ z[p]) / temperature - math.log(denom) for p in pos)
        total += -(temperature / base_temperature) * s / len(pos)
    return total / len(z)


@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 2, 3, 4, 5],  # all distinct: SupCon == SimCLR
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],  # one class
        [3, 1, 3, 2, 1, 3],
    ],
)
@pytest.mark.parametrize("views", [1, 2, 3])
def test_matches_per_anchor_loop(labels, views):
    torch.manual_seed(len(labels) * views + sum(labels))
    feats = F.normalize(torch.randn(len(labels), views, 16, dtype=torch.float64), dim=2)
    y = torch.tensor(labels)
    got = supcon_loss(feats, y, temperature=0.1, base_temperature=0.07)
    want = loop_supcon(feats, y, 0.1, 0.07)
    assert got.item() == pytest.approx(want, abs=1e-5)


def test_simclr_when_labels_none():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(5, 2, 8), dim=2)
    got = supcon_loss(feats, None, temperature=0.5, base_temperature=0.5)
    assert got.item() == pytest.approx(loop_supcon(feats, None, 0.5, 0.5), abs=1e-5)
    # labels all distinct give the same loss as no labels
    assert torch.allclose(got, supcon_loss(feats, torch.arange(5), 0.5, 0.5))


def test_hand_computed_two_samples_two_views():
    # Two samples, two views, unit vectors in 2-D: sample 0 = e1 (both views), sample 1 = e2.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])
    t = 1.0
    # Anchor e1 sees: its other view (sim 1) and two e2 views (sim 0).
    # log p(pos) = 1 - log(e^1 + 2 e^0); same for every anchor by symmetry.
    expected = -(1 - math.log(math.e + 2))
    got = supcon_loss(feats, None, temperature=t, base_temperature=t)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # Same labels: all three others are positives.
    same = supcon_loss(feats, torch.tensor([7, 7]), temperature=t, base_temperature=t)
    log_denom = math.log(math.e + 2)
    expected_same = -((1 - log_denom) + 2 * (0 - log_denom)) / 3
    assert same.item() == pytest.approx(expected_same, abs=1e-6)


def test_temperature_scaling():
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(4, 2, 8), dim=2)
    y = torch.tensor([0, 1, 0, 1])
    a = supcon_loss(feats, y, temperature=0.1, base_temperature=0.1)
    b = supcon_loss(feats, y, temperature=0.1, base_temperature=0.07)
    assert b.item() == pytest.approx(a.item() * 0.1 / 0.07, rel=1e-6)


def test_anchor_without_positive_is_finite():
    # One view, distinct labels: no anchor has a positive -> loss 0, gradient finite.
    feats = F.normalize(torch.randn(4, 1, 8), dim=2).requires_grad_()
    loss = supcon_loss(feats, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(feats.grad).all()


def test_large_logits_are_stable():
    feats = F.normalize(torch.randn(8, 2, 4), dim=2)
    loss = supcon_loss(feats, torch.randint(0, 2, (8,)), temperature=1e-3)
    assert torch.isfinite(loss)


def test_gradcheck():
    torch.manual_seed(2)
    raw = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])

    def fn(x):
        return supcon_loss(F.normalize(x, dim=2), y, temperature=0.2, base_temperature=0.07)

    assert torch.autograd.gradcheck(fn, (raw,))


def test_shape_errors():
    with pytest.raises(ValueError, match="batch, views, dim"):
        supcon_loss(torch.randn(4, 8))
    with pytest.raises(ValueError, match="labels must have shape"):
        supcon_loss(torch.randn(4, 2, 8), torch.arange(3))
