"""Helpers shared by the tests and the benchmarks (not used by the pipeline)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class RiggedHead(nn.Module):
    """A linear head whose prediction is forced: it adds a large logit to `self.targets`.

    Set `targets` before a step: the true labels make every masked view accepted, any other
    class makes every one rejected. The linear part still runs and carries gradients, so
    Grad-CAM and the rest of the step do the same work as with a real head.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.num_classes = num_classes
        self.targets: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        if self.targets is None:
            return logits
        return logits + 1e4 * F.one_hot(self.targets, self.num_classes).to(logits.dtype)


def rig(model: nn.Module) -> RiggedHead:
    """Replace `model.classifier` (an nn.Linear) by a RiggedHead with the same weights."""
    old = model.classifier
    head = RiggedHead(old.in_features, old.out_features).to(old.weight.device)
    head.linear.load_state_dict(old.state_dict())
    model.classifier = head
    return head


def write_eval_parts(run_dir: Path, metrics: dict) -> None:
    """Write `metrics` as `excon evaluate` would: adv/* to eval/robustness, expl/* to
    eval/explanations, everything else to eval/calibration; identity keys in all three."""
    from excon.artifacts import write_json
    from excon.evaluate import PARTS

    ident = {k: v for k, v in metrics.items() if k in ("method", "dataset", "seed")}
    prefix = {"robustness": "adv/", "explanations": "expl/"}
    for part in PARTS:
        if part == "calibration":
            own = {k: v for k, v in metrics.items() if not k.startswith(("adv/", "expl/"))}
        else:
            own = {k: v for k, v in metrics.items() if k.startswith(prefix[part])}
        write_json(Path(run_dir) / "eval" / part / "metrics.json", {**ident, **own})
