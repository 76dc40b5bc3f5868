"""FGSM / PGD on normalised inputs: budgets, equivalence with direct and torchattacks
implementations, and the flat adversarial metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from excon.evaluate.calibration import ece
from excon.evaluate.robustness import attack_metrics, attack_probs, fgsm, metrics_of_probs, pgd
from excon.models import ExConNet

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-style, not dyadic


def _norm(pixels, mean=MEAN, std=STD):
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return (pixels - m) / s


def _pixels(images, mean=MEAN, std=STD):
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return images * s + m


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable pixels: class k is 0.08 brighter in channel k; returned normalised."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    pixels = torch.rand(n, 3, 8, 8, generator=g) * 0.6 + 0.2
    pixels[torch.arange(n), labels] += 0.08
    return _norm(pixels), labels


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained to ~100% clean accuracy, in eval mode, plus held-out data."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    x, y = _data(192, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    x_test, y_test = _data(96, seed=1)
    return model, x_test, y_test


def test_fgsm_with_zero_eps_changes_nothing(trained):
    model, x, y = trained
    assert torch.allclose(fgsm(model, x, y, 0.0, MEAN, STD), x, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(pgd(model, x, y, 0.0, MEAN, STD, generator=g), x, atol=1e-6)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_pixels_stay_in_the_eps_ball_and_in_range(trained, attack):
    model, x, y = trained
    # push some clean pixels onto the [0, 1] boundary so clamping is exercised
    clean = _pixels(x).clone()
    clean[:, :, 0, :] = 0.0
    clean[:, :, 1, :] = 1.0
    x = _norm(clean)
    eps = 8
    g = torch.Generator().manual_seed(0)
    adv = (
        fgsm(model, x, y, eps, MEAN, STD)
        if attack == "fgsm"
        else pgd(model, x, y, eps, MEAN, STD, steps=5, generator=g)
    )
    adv_pixels = _pixels(adv)
    delta = (adv_pixels - clean).abs()
    assert delta.max() <= eps / 255 + 1e-5
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    # the budget is used: FGSM moves every unclamped pixel by exactly eps
    inner = delta[:, :, 2:, :]
    if attack == "fgsm":
        assert torch.allclose(inner, torch.full_like(inner, eps / 255), atol=1e-5)
    else:
        assert inner.max() > 0.9 * eps / 255


def test_fgsm_equals_a_direct_implementation(trained):
    model, x, y = trained
    eps = 4
    # one-liner with the gradient taken in NORMALISED space: per-channel std > 0, so its sign
    # equals the pixel-space gradient's sign
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)[0]
    direct = _norm((_pixels(x) + eps / 255 * grad.sign()).clamp(0, 1))
    assert torch.allclose(fgsm(model, x, y, eps, MEAN, STD), direct, atol=1e-5)


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    metrics = attack_metrics(model, [(x[:48], y[:48]), (x[48:], y[48:])], [2, 4, 8], MEAN, STD)
    clean_acc = float((model(x).argmax(1) == y).float().mean())
    assert clean_acc > 0.95
    for e in (2, 4, 8):
        assert metrics[f"adv/pgd/eps{e}/acc"] <= metrics[f"adv/fgsm/eps{e}/acc"]
        assert metrics[f"adv/fgsm/eps{e}/acc"] < clean_acc
    assert 0.2 < metrics["adv/pgd/eps8/acc"] < 0.8  # non-trivial at the largest budget
    assert metrics["adv/pgd/eps8/acc"] < metrics["adv/pgd/eps2/acc"]


def test_attacks_do_not_touch_model_state():
    torch.manual_seed(0)
    model = ExConNet(num_classes=3, arch="resnet18", width=0.0625, in_channels=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.inference_mode():  # as evaluation code may call it
        x_inf = x.clone()
    adv = pgd(model, x_inf, y, 4, MEAN, STD, steps=2, generator=torch.Generator().manual_seed(0))
    adv_f = fgsm(model, x_inf, y, 4, MEAN, STD)
    assert adv.shape == adv_f.shape == x.shape and not adv.requires_grad
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included


def test_pgd_random_start_is_seeded(trained):
    model, x, y = trained

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return pgd(model, x[:8], y[:8], 4, MEAN, STD, steps=2, generator=gen)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    no_start = pgd(model, x[:8], y[:8], 4, MEAN, STD, steps=2, random_start=False)
    assert torch.equal(no_start, pgd(model, x[:8], y[:8], 4, MEAN, STD, 2, random_start=False))


def test_attack_metrics_keys_clean_case_and_determinism(trained):
    model, x, y = trained
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    m = attack_metrics(model, batches, [0, 4, 2.5], MEAN, STD, steps=3, seed=7)
    assert set(m) == {
        f"adv/{a}/eps{e}/{k}"
        for a in ("fgsm", "pgd")
        for e in ("0", "4", "2.5")
        for k in ("acc", "ece")
    }
    with torch.no_grad():
        probs = model(x).softmax(1)
    clean_acc = float((probs.argmax(1) == y).float().mean())
    for a in ("fgsm", "pgd"):
        assert m[f"adv/{a}/eps0/acc"] == pytest.approx(clean_acc)
        assert m[f"adv/{a}/eps0/ece"] == pytest.approx(ece(probs, y), abs=1e-5)
    # seeded; and a loader's ([view], label) batches count as their first view
    views = [([xb], yb) for xb, yb in batches]
    assert attack_metrics(model, views, [0, 4, 2.5], MEAN, STD, steps=3, seed=7) == m
    # the per-image probabilities the report bootstraps score to the same metrics, in batch order
    probs, labels = attack_probs(model, batches, [0, 4, 2.5], MEAN, STD, steps=3, seed=7)
    assert torch.equal(labels, y) and probs[("pgd", 4)].shape == (
        len(y),
        probs[("pgd", 4)].shape[1],
    )
    assert metrics_of_probs(probs, labels) == m


# torchattacks expects [0, 1] inputs: wrap our model with the normalisation. Dyadic mean/std
# and pixels k/256 make the clean un-normalise exact, so both attacks see identical pixels and
# gradients, and the results must be bit-identical.
DYADIC_MEAN, DYADIC_STD = (0.5, 0.5, 0.25), (0.25, 0.5, 0.125)


class _Normalised(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(_norm(pixels, DYADIC_MEAN, DYADIC_STD))


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_matches_torchattacks(trained, attack):
    torchattacks = pytest.importorskip("torchattacks")
    model, _, y = trained
    pixels = torch.randint(0, 257, (96, 3, 8, 8), generator=torch.Generator().manual_seed(3)) / 256
    pixels[torch.arange(96), y] = (pixels[torch.arange(96), y] + 0.0625).clamp(max=1)
    x = _norm(pixels, DYADIC_MEAN, DYADIC_STD)
    assert torch.equal(_pixels(x, DYADIC_MEAN, DYADIC_STD), pixels)  # exact round trip
    wrapped = _Normalised(model).eval()
    if attack == "fgsm":
        ours = fgsm(model, x, y, 4, DYADIC_MEAN, DYADIC_STD)
        theirs = torchattacks.FGSM(wrapped, eps=4 / 255)(pixels, y)
    else:
        ours = pgd(model, x, y, 4, DYADIC_MEAN, DYADIC_STD, steps=5, random_start=False)
        atk = torchattacks.PGD(wrapped, eps=4 / 255, alpha=1 / 255, steps=5, random_start=False)
        theirs = atk(pixels, y)
    assert not torch.equal(theirs, pixels)
    # compared in normalised space: x +- 4/255 is not dyadic, so only normalising is exact here
    assert torch.equal(ours, _norm(theirs, DYADIC_MEAN, DYADIC_STD))
