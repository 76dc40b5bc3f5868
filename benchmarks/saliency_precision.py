"""Does bf16 saliency move ExCon's accept decisions? A trained excon run's network explains the
prepared test images twice under bf16 autocast, once with method.saliency_precision=fp32 (the
default: autocast off for Grad-CAM, the mask and the accept test) and once with `amp` (all of it
in bf16), from the same weights and BatchNorm statistics. Prints both accept rates, how many
decisions differ and how far the saliency maps moved.

    python benchmarks/saliency_precision.py --run runs/animals/excon/seed0 \
        --data data/prepared/animals --device cuda

On a CPU, autocast's bf16 stands in for CUDA's (the code path is the same, the kernels are not):
the figure that matters is the GPU's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from excon.artifacts import load_model
from excon.config import MethodConfig
from excon.data.prepared import load_prepared
from excon.methods import StepContext, excon_views
from excon.saliency import GradCam, default_layer


def normalised(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised as at training (the standard view: no augmentation)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def decide(
    net: torch.nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, tau: float, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept decisions and saliency maps for one batch under bf16 autocast (as train.amp)."""
    cfg = MethodConfig(tau=tau, saliency_precision=precision)
    ctx = StepContext(cfg, epoch=10**6, num_classes=int(y.max()) + 1, gradcam=GradCam(net, layer))
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        views = excon_views(net, x, x, x, y, ctx)  # random/spare views do not affect acceptance
    return views.accepted.cpu(), views.saliency.float().cpu()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a trained excon run folder")
    p.add_argument("--data", type=Path, required=True, help="its prepared dataset folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=1024, help="test images (first N)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = p.parse_args()

    net, meta = load_model(args.run, args.device)
    data = load_prepared(args.data)
    test = data.split("test")
    n = min(args.images, len(test.labels))
    layer = meta.get("gradcam_layer") or default_layer(meta["arch"], data.image_size[0])
    net.train()  # the reference explains in train mode; its BatchNorm statistics are restored
    state = {k: v.clone() for k, v in net.state_dict().items()}
    accepted = {"fp32": [], "amp": []}
    gap = []
    for start in range(0, n, args.batch):
        x = normalised(test.images[start : start + args.batch], data.mean, data.std)
        x = x.to(args.device)
        y = torch.from_numpy(test.labels[start : start + args.batch]).long().to(args.device)
        maps = {}
        for precision in ("fp32", "amp"):
            net.load_state_dict(state)  # both see the same BatchNorm statistics
            decisions, maps[precision] = decide(net, layer, x, y, args.tau, precision)
            accepted[precision].append(decisions)
        gap.append((maps["fp32"] - maps["amp"]).abs().flatten(1).mean(1))
    net.load_state_dict(state)
    fp32, amp = (torch.cat(accepted[k]) for k in ("fp32", "amp"))
    figures = {
        "device": str(args.device),
        "images": n,
        "tau": args.tau,
        "accept_rate_fp32": fp32.float().mean().item(),
        "accept_rate_amp": amp.float().mean().item(),
        "decisions_differing": int((fp32 != amp).sum()),
        "saliency_mean_abs_diff": torch.cat(gap).mean().item(),
    }
    print(
        f"{n} test images on {args.device}, tau {args.tau}: accept rate fp32 saliency "
        f"{figures['accept_rate_fp32']:.4f}, bf16 saliency {figures['accept_rate_amp']:.4f}; "
        f"{figures['decisions_differing']} decisions differ; mean |map difference| "
        f"{figures['saliency_mean_abs_diff']:.4f}"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
