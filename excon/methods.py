"""One training step per method: the only place where ce, supcon (and excon) differ.

A step takes the batch of views the method asked for (`Method.views`) and returns the loss to
back-propagate plus a few numbers for logging. The loop in `train.py` knows nothing else about
the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excon.config import ConfigError, MethodConfig
from excon.losses import supcon_loss
from excon.models import ExConNet


@dataclass
class StepOutput:
    loss: torch.Tensor  # what the optimiser minimises (may include the online head's loss)
    stats: dict[str, torch.Tensor]  # detached scalars, averaged per epoch by the loop


StepFn = Callable[[ExConNet, list[torch.Tensor], torch.Tensor, MethodConfig], StepOutput]


@dataclass(frozen=True)
class Method:
    name: str
    views: tuple[str, ...]  # view kinds drawn per image (see excon.data.views)
    step: StepFn
    # True when the linear head is part of the method's own objective (ce); otherwise it is an
    # auxiliary head trained on detached features (needed by ExCon's Grad-CAM, and a free
    # online accuracy for supcon).
    head_in_objective: bool


def ce_step(
    model: ExConNet, views: list[torch.Tensor], labels: torch.Tensor, cfg: MethodConfig
) -> StepOutput:
    logits = model(views[0])
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return StepOutput(loss, {"loss": loss.detach(), "head_acc": acc.detach()})


def supcon_step(
    model: ExConNet, views: list[torch.Tensor], labels: torch.Tensor, cfg: MethodConfig
) -> StepOutput:
    batch = labels.shape[0]
    h = model.encoder(torch.cat(views))  # one forward for all views: BN sees the whole batch
    z = model.projector(h).view(len(views), batch, -1).transpose(0, 1)
    loss = supcon_loss(z, labels, cfg.temperature, cfg.base_temperature)
    stats = {"loss": loss.detach(), "contrastive_loss": loss.detach()}
    if cfg.head_training == "online":
        # Detached features: the head learns from the encoder but never shapes it.
        logits = model.classifier(h[:batch].detach())
        head_loss = F.cross_entropy(logits, labels)
        stats["head_loss"] = head_loss.detach()
        stats["head_acc"] = (logits.argmax(1) == labels).float().mean().detach()
        loss = loss + head_loss
    return StepOutput(loss, stats)


METHODS: dict[str, Method] = {
    "ce": Method("ce", ("ce",), ce_step, head_in_objective=True),
    "supcon": Method("supcon", ("random", "random"), supcon_step, head_in_objective=False),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not available (allowed: {', '.join(METHODS)})")
    return METHODS[name]
