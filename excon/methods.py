"""One training step per method: the only place where ce, supcon and excon differ.

A step takes the batch of views the method asked for (`Method.views`) and returns the loss to
back-propagate plus a few numbers for logging. The loop in `train.py` knows nothing else about
the method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from excon.config import ConfigError, MethodConfig
from excon.distributed import gather_with_grad
from excon.losses import supcon_loss
from excon.models import ExConNet
from excon.saliency import GradCam, keep_mask, mask_images


@dataclass
class StepContext:
    cfg: MethodConfig
    epoch: int = 0  # 0-based
    num_classes: int = 0
    gradcam: GradCam | None = None  # excon only
    bn: str = "batch"  # train.bn: "batch" | "per_view" (how BatchNorm sees the views)


@dataclass
class StepOutput:
    loss: torch.Tensor  # what the optimiser minimises (may include the online head's loss)
    stats: dict[str, torch.Tensor]  # detached scalars, averaged per epoch by the loop


StepFn = Callable[[ExConNet, list[torch.Tensor], torch.Tensor, StepContext], StepOutput]


@dataclass(frozen=True)
class Method:
    name: str
    views: tuple[str, ...]  # view kinds drawn per image (see excon.data.views)
    step: StepFn
    # True when the linear head is part of the method's own objective (ce); otherwise it is an
    # auxiliary head trained on detached features (needed by ExCon's Grad-CAM, and a free
    # online accuracy for supcon).
    head_in_objective: bool
    uses_saliency: bool = False  # needs a GradCam in its StepContext


def ce_step(
    model: ExConNet, views: list[torch.Tensor], labels: torch.Tensor, ctx: StepContext
) -> StepOutput:
    logits = model(views[0])
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return StepOutput(loss, {"loss": loss.detach(), "head_acc": acc.detach()})


def contrastive_step(
    model: ExConNet,
    views: list[torch.Tensor],
    labels: torch.Tensor,
    cfg: MethodConfig,
    background: torch.Tensor | None = None,
    bn: str = "batch",
) -> StepOutput:
    """SupCon on `views` (each [B', ...]) with `labels` [B']. `background` marks ExCon's
    background negatives: excluded as anchors and positives unless `cfg.background_anchor`
    (then they are one more class). The online head (if on) sees real samples of view 1 only.
    `bn`: how BatchNorm normalises the views (see `encode_views`)."""
    batch = labels.shape[0]
    h = encode_views(model.encoder, views, bn)
    z = model.projector(h).view(len(views), batch, -1).transpose(0, 1)
    negatives_only = None if cfg.background_anchor else background
    # Under DDP the contrast is over the global batch: every rank's features (with gradient),
    # labels and background flags (no-ops in a single process).
    z_all, labels_all = gather_with_grad(z), gather_with_grad(labels)
    negatives_all = None if negatives_only is None else gather_with_grad(negatives_only)
    # The loss in fp32 even under bf16 autocast: logits near 1/temperature = 10 lose ~0.03 in
    # bf16, which coarsens the contrastive gradients (the reference computes it in fp32).
    with torch.autocast(z.device.type, enabled=False):
        loss = supcon_loss(
            z_all.float(), labels_all, cfg.temperature, cfg.base_temperature, negatives_all
        )
    stats = {"loss": loss.detach(), "contrastive_loss": loss.detach()}
    if cfg.head_training == "online":
        # Detached features: the head learns from the encoder but never shapes it.
        real = slice(None) if background is None else ~background
        logits = model.classifier(h[:batch][real].detach())
        head_loss = F.cross_entropy(logits, labels[real])
        stats["head_loss"] = head_loss.detach()
        stats["head_acc"] = (logits.argmax(1) == labels[real]).float().mean().detach()
        loss = loss + head_loss
    return StepOutput(loss, stats)


def supcon_step(
    model: ExConNet, views: list[torch.Tensor], labels: torch.Tensor, ctx: StepContext
) -> StepOutput:
    return contrastive_step(model, views, labels, ctx.cfg, bn=ctx.bn)


def encode_views(encoder: nn.Module, views: list[torch.Tensor], bn: str) -> torch.Tensor:
    """Features of cat(views). "batch": one forward, BatchNorm normalises all views together.
    "per_view": each view is its own BatchNorm batch, as the reference's DataParallel on two
    GPUs (it scatters cat([view1, view2]) in two halves, one per GPU); the running statistics
    follow view 1 only, as DataParallel keeps only device 0's replica's buffer updates."""
    if bn == "batch" or len(views) == 1:
        return encoder(torch.cat(views))
    first = encoder(views[0])
    with _frozen_running_stats(encoder):
        rest = [encoder(v) for v in views[1:]]
    return torch.cat([first, *rest])


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics unchanged by the forwards in the block: momentum 0 makes the
    update `running * 1 + batch * 0`. Restoring saved values instead would write in place into
    buffers the first view's backward still needs (autograd refuses that)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms if m.track_running_stats]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)  # a counter no backward reads


def saliency_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """ "fp32": autocast off for Grad-CAM, the mask and the accept test, whatever the training
    step runs under (bf16 would move pixels across tau and flip accept decisions); "amp": as
    the step (under train.amp, bf16 on CUDA)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def masking_active(cfg: MethodConfig, epoch: int) -> bool:
    """The reference counts epochs from 1 and masks when `epoch >= exp_epochs`."""
    return epoch + 1 >= cfg.exp_epochs


@dataclass
class ExConViews:
    view1: torch.Tensor  # masked image where accepted, else the spare random view (+ backgrounds)
    view2: torch.Tensor  # the random view (+ backgrounds)
    labels: torch.Tensor  # true labels (+ num_classes for each background)
    background: torch.Tensor  # bool, True for the appended background negatives
    accepted: torch.Tensor  # bool [B], masked view accepted
    masked: torch.Tensor  # the masked standard views [B, ...]
    saliency: torch.Tensor  # Grad-CAM maps [B, 1, H, W]


def excon_views(
    model: ExConNet,
    standard: torch.Tensor,
    random: torch.Tensor,
    spare: torch.Tensor,
    labels: torch.Tensor,
    ctx: StepContext,
) -> ExConViews:
    """Build ExCon's two contrastive views from [standard, random, spare] as the reference does:
    Grad-CAM of the true class on the standard view -> mask -> the head classifies the masked
    image -> accepted: view 1 = masked; rejected: view 1 = spare, and with `negative_pair` the
    masked image is appended to both views with the background label `num_classes`.

    All tensor operations: one device-to-host sync per batch (the number of backgrounds sets the
    batch size), none per sample. The reference also classifies the unmasked image, but no
    branch of its selection depends on that prediction, so it is not computed here.
    """
    cfg, gradcam = ctx.cfg, ctx.gradcam
    if gradcam is None:
        raise ValueError("excon step needs a GradCam in its StepContext")
    with saliency_precision(standard.device, cfg.saliency_precision):
        # in the model's current (train) mode, as the reference
        saliency = gradcam(standard, labels)
        masked = mask_images(standard, keep_mask(saliency, cfg.tau))
        with torch.no_grad():
            accepted = model(masked).argmax(1) == labels
    view1 = torch.where(accepted[:, None, None, None], masked, spare)
    view2, out_labels = random, labels
    background = torch.zeros_like(labels, dtype=torch.bool)
    if cfg.negative_pair:
        rejected = masked[~accepted]  # order of the batch, as the reference's loop appends
        n = rejected.shape[0]
        view1 = torch.cat([view1, rejected])
        view2 = torch.cat([view2, rejected])
        out_labels = torch.cat([labels, labels.new_full((n,), ctx.num_classes)])
        background = torch.cat([background, background.new_ones(n)])
    return ExConViews(view1, view2, out_labels, background, accepted, masked, saliency)


def excon_step(
    model: ExConNet, views: list[torch.Tensor], labels: torch.Tensor, ctx: StepContext
) -> StepOutput:
    standard, random, spare = views
    if not masking_active(ctx.cfg, ctx.epoch):
        # Before exp_epochs ExCon is SupCon on the two random views (the reference's
        # `images[0] = images[2]`); the standard view is drawn but unused.
        return contrastive_step(model, [spare, random], labels, ctx.cfg, bn=ctx.bn)
    v = excon_views(model, standard, random, spare, labels, ctx)
    out = contrastive_step(model, [v.view1, v.view2], v.labels, ctx.cfg, v.background, ctx.bn)
    out.stats["accept_rate"] = v.accepted.float().mean().detach()
    out.stats["backgrounds"] = v.background.sum().float().detach()
    return out


# Step statistics that are counts (a job's total is the sum over ranks, not the mean).
COUNT_STATS = frozenset({"backgrounds"})


METHODS: dict[str, Method] = {
    "ce": Method("ce", ("ce",), ce_step, head_in_objective=True),
    "supcon": Method("supcon", ("random", "random"), supcon_step, head_in_objective=False),
    "excon": Method(
        "excon",
        ("standard", "random", "random"),
        excon_step,
        head_in_objective=False,
        uses_saliency=True,
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not available (allowed: {', '.join(METHODS)})")
    return METHODS[name]
