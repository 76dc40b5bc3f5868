"""L-inf adversarial attacks (FGSM, PGD) on normalised inputs, and adversarial acc/ECE.

As in the reference, an attack works on [0, 1] pixels: un-normalise, step in pixel space with
budget eps (given in /255 units), clamp to [0, 1], re-normalise. The gradient is that of the
cross-entropy of the TRUE label. The caller puts the model in eval mode; nothing here changes
module state, and parameter `.grad`s are left untouched (only the input gradient is taken).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from excon.evaluate.calibration import ece

Stats = Sequence[float] | torch.Tensor
AttackProbs = dict[tuple[str, float], torch.Tensor]  # (attack, eps) -> [N, C]


def _stats(x: torch.Tensor, mean: Stats, std: Stats) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return m, s


def _pixel_grad(
    model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, m: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """d CE(model((pixels - m) / s), labels) / d pixels."""
    pixels = pixels.detach().requires_grad_(True)
    # sum, not mean: each sample's gradient is independent of the batch size (only its sign
    # is used, but a mean over a large batch can underflow small gradients to 0).
    loss = F.cross_entropy(model((pixels - m) / s), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, pixels)
    return grad


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    mean: Stats,
    std: Stats,
) -> torch.Tensor:
    """One signed-gradient step of size eps/255 in pixel space, clamped to [0, 1]; returns
    normalised images. (pgd with steps=1, step_size=eps and no random start agrees up to
    float rounding; this is the textbook form, bit-identical to torchattacks' FGSM.)"""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    with torch.inference_mode(False), torch.enable_grad():
        # clone: inputs made under inference_mode cannot enter autograd
        images, labels = images.detach().clone(), labels.detach().clone()
        m, s = _stats(images, mean, std)
        clean = images * s + m
        adv = (clean + eps / 255 * _pixel_grad(model, clean, labels, m, s).sign()).clamp(0, 1)
        return ((adv - m) / s).detach()


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    mean: Stats,
    std: Stats,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD (Madry et al.): optional uniform start in the eps ball, `steps` signed-gradient
    steps of `step_size` (default eps/4; both in /255 units), each followed by projection onto
    the eps ball around the clean pixels and clamping to [0, 1]. Returns normalised images.
    `generator` (on any device) seeds the random start."""
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got eps={eps}, steps={steps}")
    budget = eps / 255
    alpha = (eps / 4 if step_size is None else step_size) / 255
    with torch.inference_mode(False), torch.enable_grad():
        # clone: inputs made under inference_mode cannot enter autograd
        images, labels = images.detach().clone(), labels.detach().clone()
        m, s = _stats(images, mean, std)
        clean = images * s + m
        adv = clean
        if random_start:
            device = generator.device if generator is not None else images.device
            noise = torch.rand(images.shape, generator=generator, device=device, dtype=images.dtype)
            adv = (clean + (2 * noise.to(images.device) - 1) * budget).clamp(0, 1)
        for _ in range(steps):
            adv = adv + alpha * _pixel_grad(model, adv, labels, m, s).sign()
            # project as torchattacks does (delta first), then stay a valid image
            adv = (clean + (adv - clean).clamp(-budget, budget)).clamp(0, 1)
        return ((adv - m) / s).detach()


def _eps_name(eps: float) -> str:
    return f"eps{int(eps)}" if float(eps).is_integer() else f"eps{eps:g}"


def attack_metrics(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor]],
    eps_list: Sequence[float],
    mean: Stats,
    std: Stats,
    *,
    device: str | torch.device = "cpu",
    steps: int = 10,
    step_size: float | None = None,
    n_bins: int = 10,
    seed: int = 0,
    total: int | None = None,
) -> dict[str, float]:
    """Accuracy and ECE under FGSM and PGD at each eps (in /255 units) over all batches.

    `batches` yields (images, labels) of normalised images, e.g. a loader of the "standard"
    view; a list of views counts as its first view. PGD's random start is drawn from a
    generator seeded with `seed`, so a fixed batch order gives fixed numbers. Returns flat keys
    `adv/{fgsm,pgd}/eps{e}/{acc,ece}`.
    """
    probs, labels = attack_probs(
        model,
        batches,
        eps_list,
        mean,
        std,
        device=device,
        steps=steps,
        step_size=step_size,
        seed=seed,
        total=total,
    )
    return metrics_of_probs(probs, labels, n_bins)


def metrics_of_probs(
    probs: AttackProbs, labels: torch.Tensor, n_bins: int = 10
) -> dict[str, float]:
    """`adv/{attack}/eps{e}/{acc,ece}` of the adversarial probabilities."""
    metrics = {}
    for (name, eps), p in probs.items():
        key = f"adv/{name}/{_eps_name(eps)}"
        metrics[f"{key}/acc"] = float((p.argmax(dim=1) == labels).float().mean())
        metrics[f"{key}/ece"] = ece(p, labels, n_bins)
    return metrics


def attack_probs(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor]],
    eps_list: Sequence[float],
    mean: Stats,
    std: Stats,
    *,
    device: str | torch.device = "cpu",
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
    total: int | None = None,
) -> tuple[AttackProbs, torch.Tensor]:
    """Softmax probabilities [N, C] per (attack, eps) and the labels [N], in batch order: what
    `attack_metrics` scores, kept per image for the report's bootstrap."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    attacks = {
        "fgsm": lambda x, y, e: fgsm(model, x, y, e, mean, std),
        "pgd": lambda x, y, e: pgd(
            model, x, y, e, mean, std, steps=steps, step_size=step_size, generator=generator
        ),
    }
    probs: dict[tuple[str, float], list[torch.Tensor]] = {
        (a, e): [] for a in attacks for e in eps_list
    }
    targets = []
    progress = tqdm(
        batches,
        total=total,
        desc="attacks",
        leave=False,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    for images, labels in progress:
        if isinstance(images, list | tuple):
            images = images[0]
        images, labels = images.to(device), labels.to(device)
        targets.append(labels)
        for (name, eps), out in probs.items():
            adv = attacks[name](images, labels, eps)
            with torch.no_grad():
                out.append(model(adv).float().softmax(dim=1))
    if not targets:
        raise ValueError("attack_metrics: no batches")
    return {k: torch.cat(v) for k, v in probs.items()}, torch.cat(targets)
