"""Contrastive losses as pure functions (solo-learn style): tensors in, scalar out."""

from __future__ import annotations

import torch


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020), equal to HobbitLong's SupConLoss
    with `contrast_mode='all'`.

    Args:
        features: [batch, views, dim], L2-normalised along dim.
        labels: [batch] class ids; None gives SimCLR (the only positive is the other views).
        temperature: softmax temperature.
        base_temperature: the loss is scaled by temperature / base_temperature, as in the
            reference code (0.07 there), so reported values are comparable.
        background: optional [batch] bool, ExCon's background negatives with
            `background_anchor=0`: they are never positives and never anchors, only negatives in
            every denominator; the mean is over the other anchors (the reference's
            `* batch_size / actual_bsz`). Leave it None to treat backgrounds as one more class
            (`background_anchor=1`).

    Every view of every sample is an anchor; its positives are all other views with the same
    label. An anchor with no positive contributes 0 (no NaN) but still counts in the mean, as in
    HobbitLong's current code.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [batch, views, dim], got shape {tuple(features.shape)}")
    batch, views, _ = features.shape
    if labels is None:
        labels = torch.arange(batch, device=features.device)
    elif labels.shape != (batch,):
        raise ValueError(f"labels must have shape [{batch}], got {tuple(labels.shape)}")

    # View-major stacking [v0 of all samples, v1 of all samples, ...] as in the reference.
    z = features.transpose(0, 1).reshape(batch * views, -1)
    y = labels.repeat(views)
    n = z.shape[0]

    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # Excluding self from the denominator: -inf before log-sum-exp is the stable equivalent of
    # the reference's "subtract row max, multiply exp by logits_mask".
    log_prob = logits - torch.logsumexp(
        logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True
    )

    positives = (y[:, None] == y[None, :]) & ~self_mask
    if background is not None:
        if background.shape != (batch,):
            raise ValueError(f"background must have shape [{batch}], got {tuple(background.shape)}")
        real = ~background.repeat(views)
        positives &= real[:, None] & real[None, :]
    pos_count = positives.sum(1)
    sum_log_prob_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    mean_log_prob_pos = sum_log_prob_pos / pos_count.clamp(min=1)

    loss = -(temperature / base_temperature) * mean_log_prob_pos
    if background is not None:
        # Background anchors have no positives (loss 0); average over the real anchors only.
        return loss.sum() / real.sum().clamp(min=1)
    return loss.mean()
