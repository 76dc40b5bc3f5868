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


def tiny_run(
    run_dir: Path,
    metrics: dict,
    seed: int = 0,
    channels: int = 3,
    class_names: tuple[str, ...] = ("a", "b", "c"),
    size: int = 16,
    width: float = 0.0625,
) -> Path:
    """An evaluated run as the real writers leave it (encoder, probe head, eval metrics) for an
    untrained ResNet-18 (width 1/16 by default): what registry and serving tests register, and
    at width 1 what the serving benchmark serves. Untrained, not rigged: its outputs depend on
    the input like any network's."""
    from excon.artifacts import model_meta, save_model
    from excon.config import load_config
    from excon.models import ExConNet
    from excon.probe import save_probe_head

    torch.manual_seed(seed)
    k = len(class_names)
    model = ExConNet(num_classes=k, width=width, in_channels=channels, proj_dim=8)
    data_meta = {
        "dataset": "blobs",
        "class_names": list(class_names),
        "mean": [0.3] * channels,
        "std": [0.25] * channels,
        "image_size": [size, size],
        "method": "supcon",
        "gradcam_layer": None,
    }
    cfg = load_config(None, [f"model.width={width}", "model.proj_dim=8"])
    save_model(run_dir, model, model_meta(cfg.model, k, channels, data_meta))
    head = torch.nn.Linear(model.encoder.feature_dim, k)
    save_probe_head(run_dir, head)
    write_eval_parts(run_dir, {"method": "supcon", **metrics})
    return run_dir
