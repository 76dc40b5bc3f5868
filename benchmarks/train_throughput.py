"""Training throughput of ce, supcon and excon, measured side by side in one process.

Each method trains on synthetic CIFAR-shaped data (uint8 32x32x3, 100 classes) through the real
loop (`excon.train.train_one_epoch`: loader, augmentation, step, optimiser), so a slow input
pipeline shows up here as it would in `excon pretrain`. ExCon is measured with masking on (its
head untrained, so most masked views become background negatives: its slow regime). Reports
images/s per method, the excon/supcon time ratio, FLOPs per image counted with torch's
FlopCounterMode (forward + backward of one step), the achieved TFLOP/s and, given the device's
peak, the model FLOPs utilisation (MFU). Ends with the time a 200-epoch CIFAR-100 ExCon run
(reference recipe: 50k images, masking from epoch 50, one head epoch after each) would take.

    python benchmarks/train_throughput.py [--device cuda] [--batch 256] [--steps 20]
        [--width 1.0] [--workers 8] [--peak-tflops 989]

Prints one JSON line with every figure, then a short summary.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from excon.config import load_config
from excon.data.device_views import DeviceBatches
from excon.data.views import ViewDataset, make_loader
from excon.methods import StepContext, get_method
from excon.models import ExConNet
from excon.perf import tune_cpu_allocator
from excon.saliency import GradCam, default_layer
from excon.train import StepModule, train_head_one_epoch, train_one_epoch, trained_modules

# bf16 dense peak of one H100 SXM (NVIDIA's datasheet, without sparsity).
KNOWN_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
CIFAR_TRAIN, EPOCHS, EXP_EPOCHS = 50_000, 200, 50


def synthetic(n: int, classes: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, rng.integers(0, classes, n).astype(np.int64)


def setup(method_name: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides = [
        f"method.name={method_name}",
        "method.exp_epochs=0",  # masking on from the first step
        f"model.width={args.width}",
        f"train.batch_size={args.batch}",
        f"train.max_steps_per_epoch={args.steps}",
        f"train.amp={str(args.amp).lower()}",
        f"train.channels_last={str(not args.no_channels_last).lower()}",
    ]
    cfg = load_config(None, overrides)
    method = get_method(method_name)
    torch.manual_seed(0)
    model = ExConNet(args.classes, "resnet18", args.width, 3, cfg.model.proj_dim).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        [p for m in trained_modules(model, method, "epoch") for p in m.parameters()],
        lr=0.05,
        momentum=0.9,
    )
    gradcam = GradCam(model, default_layer("resnet18", args.size)) if method.uses_saliency else None
    ctx = StepContext(cfg.method, 0, args.classes, gradcam)
    return {"cfg": cfg, "method": method, "model": model, "optimizer": optimizer, "ctx": ctx}


class Batches:
    """The next `n` batches of one shared iterator: warm-up and timed steps draw from the same
    loader, so worker start-up and the first batch's latency fall in the warm-up."""

    def __init__(self, iterator: Iterator, n: int) -> None:
        self.iterator, self.n = iterator, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        for _ in range(self.n):
            yield next(self.iterator)


def loader_for(
    kinds: tuple[str, ...], data: tuple, args: argparse.Namespace, device: torch.device, epoch: int
) -> torch.utils.data.DataLoader | DeviceBatches:
    images, labels = data
    if args.augment == "device":  # whole batches on the device (train.augment: device)
        batches = DeviceBatches(images, labels, list(kinds), [0.5] * 3, [0.25] * 3, device)
        return batches.epoch(args.batch, train=True, epoch=epoch)
    ds = ViewDataset(images, labels, list(kinds), [0.5] * 3, [0.25] * 3)
    return make_loader(
        ds,
        args.batch,
        train=True,
        epoch=epoch,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )


def step_flops(run: dict, data: tuple, args: argparse.Namespace, device: torch.device) -> float:
    """FLOPs of one training step (forward, Grad-CAM, backward) counted by torch: the model's
    work only, so views are made outside the counter."""
    views, labels = next(iter(loader_for(run["method"].views, data, args, device, 0)))
    fmt = torch.channels_last if run["cfg"].train.channels_last else torch.contiguous_format
    views = [v.to(device, memory_format=fmt) for v in views]
    stepper = StepModule(run["model"], run["method"], [])
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = stepper(views, labels.to(device), run["ctx"])
        loss.backward()
    run["optimizer"].zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument(
        "--augment",
        choices=["loader", "device"],
        default="loader",
        help="views made per image in the loader, or per batch on the device (kornia)",
    )
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, for the MFU")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (256 if cuda else 32)
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (5 if cuda else 1)
    if device.type == "cpu":
        tune_cpu_allocator()
    data = synthetic(args.batch * (args.steps + args.warmup_steps + 1), args.classes, args.size)

    record: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    keys = ("batch", "steps", "width", "size", "workers", "augment")
    record.update({k: getattr(args, k) for k in keys})
    record["amp"] = args.amp and cuda
    rates, flops = {}, {}
    for name in ("ce", "supcon", "excon"):
        run = setup(name, args, device)
        cfg, method = run["cfg"], run["method"]
        model, ctx, optimizer = run["model"], run["ctx"], run["optimizer"]
        batches = iter(loader_for(method.views, data, args, device, 1))
        if args.warmup_steps:  # allocator, cuDNN autotuning, loader start-up: not timed
            warm = Batches(batches, args.warmup_steps)
            train_one_epoch(model, method, cfg, ctx, optimizer, warm, device, 1)
        timed = Batches(batches, args.steps)  # train_one_epoch syncs the GPU before its clock
        timed = train_one_epoch(model, method, cfg, ctx, optimizer, timed, device, 1)
        rates[name] = timed["train/images_per_s"]
        flops[name] = step_flops(run, data, args, device) / args.batch
        if name == "supcon":  # the reference's head epoch after each encoder epoch
            head = loader_for(("ce",), data, args, device, 2)
            start = time.perf_counter()
            head_opt = torch.optim.SGD(model.classifier.parameters(), lr=0.05, momentum=0.9)
            train_head_one_epoch(model, cfg, head_opt, head, device, 2)
            if cuda:
                torch.cuda.synchronize()
            rates["head_epoch"] = args.steps * args.batch / (time.perf_counter() - start)
    record["images_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    record["gflops_per_image"] = {k: round(v / 1e9, 3) for k, v in flops.items()}
    achieved = {k: rates[k] * flops[k] / 1e12 for k in flops}
    record["achieved_tflops"] = {k: round(v, 3) for k, v in achieved.items()}
    peak = peak_tflops(args, device)
    if peak:
        record["mfu"] = {k: round(v / peak, 4) for k, v in achieved.items()}
    ratio = rates["supcon"] / rates["excon"]
    record["excon_over_supcon_time"] = round(ratio, 3)
    # 200 epochs: SupCon-like until masking starts, ExCon after, a head epoch after each.
    seconds = CIFAR_TRAIN * (
        (EXP_EPOCHS - 1) / rates["supcon"]
        + (EPOCHS - EXP_EPOCHS + 1) / rates["excon"]
        + EPOCHS / rates["head_epoch"]
    )
    record["cifar100_excon_200_epochs_min"] = round(seconds / 60, 1)
    print(json.dumps(record))
    print(
        "images/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
        + f"; excon/supcon time ratio {ratio:.2f}"
    )
    if peak:
        print("MFU: " + ", ".join(f"{k} {v:.1%}" for k, v in record["mfu"].items()))
    print(f"estimated 200-epoch CIFAR-100 ExCon run: {seconds / 60:.0f} min")


if __name__ == "__main__":
    main()
