"""Step time of ce, supcon and excon, measured side by side in one process.

One optimiser step (forward, loss, backward, SGD update) of each method on a CIFAR-shaped batch,
ResNet-18 at 32 px, 100 classes, batch 64. Methods are interleaved round by round so that
machine noise hits them alike; the median over rounds (after warm-up) is reported. ExCon is
timed in two regimes with a rigged head (excon.testing.RiggedHead): *accept* (every masked view
accepted) and *reject* (every masked view rejected, so the contrastive batch doubles with
background negatives).

    python benchmarks/step_time.py [--rounds 8] [--batch 64] [--device cpu|cuda] [--width 1.0]

Prints one JSON line with every timing, then `excon/supcon step-time ratio: accept X reject Y`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from excon.config import MethodConfig
from excon.methods import METHODS, StepContext
from excon.models import ExConNet
from excon.perf import tune_cpu_allocator
from excon.saliency import GradCam, default_layer
from excon.testing import rig


def make_runner(
    method: str, args: argparse.Namespace, device: torch.device, regime: str
) -> Callable[[], float]:
    torch.manual_seed(0)
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    model = ExConNet(args.classes, "resnet18", args.width, 3).to(device, memory_format=fmt)
    model.train()
    head = rig(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    cfg = MethodConfig(name=method, exp_epochs=0, head_training="epoch")
    gradcam = GradCam(model, default_layer("resnet18", args.size)) if method == "excon" else None
    ctx = StepContext(cfg, epoch=0, num_classes=args.classes, gradcam=gradcam)
    g = torch.Generator().manual_seed(1)
    n_views = len(METHODS[method].views)
    views = [
        torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device, memory_format=fmt)
        for _ in range(n_views)
    ]
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    head.targets = labels if regime == "accept" else (labels + 1) % args.classes
    step_fn = METHODS[method].step

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = step_fn(model, views, labels, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--default-allocator",
        action="store_true",
        help="skip excon.perf.tune_cpu_allocator (what `excon pretrain` applies on CPU)",
    )
    p.add_argument(
        "--no-channels-last", action="store_true", help="NCHW instead of pretrain's default NHWC"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    tuned = device.type == "cpu" and not args.default_allocator and tune_cpu_allocator()

    runners = {
        "ce": make_runner("ce", args, device, "accept"),
        "supcon": make_runner("supcon", args, device, "accept"),
        "excon_accept": make_runner("excon", args, device, "accept"),
        "excon_reject": make_runner("excon", args, device, "reject"),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.warmup + args.rounds):
        for name, step in runners.items():
            t = step()
            if r >= args.warmup:
                times[name].append(t)
    median = {k: statistics.median(v) for k, v in times.items()}
    accept = median["excon_accept"] / median["supcon"]
    reject = median["excon_reject"] / median["supcon"]
    record = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_allocator_tuned": tuned,
        "channels_last": not args.no_channels_last,
        "batch": args.batch,
        "size": args.size,
        "width": args.width,
        "rounds": args.rounds,
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratio_accept": round(accept, 3),
        "ratio_reject": round(reject, 3),
    }
    print(json.dumps(record))
    print(f"excon/supcon step-time ratio: accept {accept:.2f} reject {reject:.2f}")


if __name__ == "__main__":
    main()
