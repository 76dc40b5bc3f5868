"""The pre-training loop: train_one_epoch / train_head_one_epoch / evaluate, checkpoint and
exact resume (after torchvision's references/classification/train.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from excon import artifacts, distributed
from excon.config import Config, ConfigError
from excon.data.prepared import PreparedDataset, load_prepared
from excon.data.views import ViewDataset, make_loader
from excon.guard import DivergenceError, StepGuard, cause_hint, nonfinite_tensors
from excon.methods import COUNT_STATS, Method, StepContext, get_method
from excon.models import ExConNet
from excon.perf import tune_cpu_allocator
from excon.plots import save_saliency_grid, save_training_curves
from excon.saliency import GradCam, default_layer, keep_mask, mask_images
from excon.seeds import stream_seed

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
CURVES = "training.csv"  # the same rows for `dvc plots`
SUMMARY = "summary.json"
CONFIG = "config.json"  # the resolved parameters of the run
FIGURES = "figures"  # training curves (every method) and ExCon's saliency grids


# What a checkpoint must agree on to be resumed (probe/eval settings do not touch training),
_TRAINING_SECTIONS = ("data", "model", "method", "optim", "train", "study")
# and parameters that may change between a run and its resume without changing the result.
_RESUME_FREE = {
    "data.num_workers",
    "data.prepared_dir",
    "data.raw_dir",
    "data.download",
    "train.device",
    "train.compile",  # how the same computation runs, not what it computes
    "train.runs_dir",
    "study.seeds",  # the study's list of seeds; this run's seed is train.seed
}


class ResumeError(RuntimeError):
    """A run directory holds a checkpoint that cannot be continued as asked."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={name!r} but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} but MPS is not available on this machine")
    return device


def epoch_split(cfg: Config) -> str:
    """The split scored after every epoch: val under the heldout protocol; the test set under
    the reference protocol, which has no val split (the authors' --validation=0 loop)."""
    return "test" if cfg.study.protocol == "reference" else "val"


def check_protocol(cfg: Config, data: PreparedDataset) -> None:
    """The prepared data must suit the protocol: heldout selects on a val split; reference
    trains on the whole training split, so it has none. Checked on the data, not the config:
    prepare and pretrain may run with different slices of the parameters (pipeline tasks)."""
    n_val = data.manifest["splits"]["val"]
    if cfg.study.protocol == "reference" and n_val:
        raise ConfigError(
            f"study.protocol=reference trains on the whole training split, but {data.path} "
            f"holds a val split of {n_val} images; prepare it with data.val_fraction=0"
        )
    if cfg.study.protocol == "heldout" and not n_val:
        raise ConfigError(
            f"study.protocol=heldout selects on a val split, and {data.path} has none "
            "(data.val_fraction 0); set study.protocol=reference or prepare with a val_fraction"
        )


def best_epoch(history: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """The epoch whose `split` top-1 is highest (the first on ties, as the reference's `>`)."""
    best = max(history, key=lambda r: (r[f"{split}/top1"], -r["epoch"]))
    return {"epoch": best["epoch"], "top1": best[f"{split}/top1"], "selected_on": split}


def seed_everything(seed: int) -> None:
    """Seed the global RNGs for weight init (the init stream, unrelated to order or views)."""
    seed = stream_seed(seed, "init")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_lr(cfg: Config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """SupContrast's schedule: cosine per epoch to lr * min_lr_ratio (epochs counted from 1 as
    in the reference), with an optional linear per-step warm-up from `warmup_from`."""
    o, total = cfg.optim, cfg.train.epochs
    eta_min = o.lr * o.min_lr_ratio

    def cosine(e: int) -> float:
        return eta_min + (o.lr - eta_min) * (1 + math.cos(math.pi * e / total)) / 2

    if epoch < o.warmup_epochs:
        p = (epoch * steps_per_epoch + step) / (o.warmup_epochs * steps_per_epoch)
        return o.warmup_from + p * (cosine(o.warmup_epochs) - o.warmup_from)
    return cosine(epoch + 1)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


def channels_last_safe(model: ExConNet, device: torch.device) -> bool:
    """torch 2.14.1's CPU (oneDNN) backward segfaults in channels-last for very narrow ResNets
    (stem of 4 or 8 channels at 64 px, seen here; 16 and wider never crashed): keep NCHW there."""
    return device.type != "cpu" or model.encoder.conv1.out_channels >= 16


def set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    # bf16 needs no loss scaling, so AMP adds no state to checkpoints.
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(iterable: Any, total: int, desc: str) -> tqdm:
    # A live bar on a terminal only; in logs (DVC, CI, pods) the per-epoch line printed by
    # `pretrain` is the progress record, without carriage-return clutter.
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )


class StepModule(nn.Module):
    """One training step of `method` as a module, so DDP wraps the whole step (its forward is
    the step's forward, Grad-CAM included) and synchronises exactly the parameters the step
    trains (`trained`). The full model is held unregistered: ExCon's Grad-CAM reads the
    classifier, which its head epoch trains under its own DDP wrapper."""

    def __init__(self, model: ExConNet, method: Method, trained: list[nn.Module]) -> None:
        super().__init__()
        self.trained = nn.ModuleList(trained)
        self.__dict__["model"] = model  # not a submodule: DDP must not see the other params
        self.method = method

    def forward(
        self, views: list[torch.Tensor], labels: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.method.step(self.__dict__["model"], views, labels, ctx)
        return out.loss, out.stats


def trained_modules(model: ExConNet, method: Method, head_training: str) -> list[nn.Module]:
    """The modules the main optimiser updates (the rest belongs to the head epoch)."""
    if method.head_in_objective:
        return [model.encoder, model.classifier]
    extra = [model.classifier] if head_training == "online" else []
    return [model.encoder, model.projector, *extra]


def train_one_epoch(
    model: ExConNet,
    method: Method,
    cfg: Config,
    ctx: StepContext,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    epoch: int,
    stepper: nn.Module | None = None,
) -> dict[str, float]:
    """`stepper`: the step as a (DDP-wrapped) StepModule; default: the method's step."""
    model.train()
    if stepper is None:
        stepper = StepModule(model, method, trained_modules(model, method, ctx.cfg.head_training))
    steps = (
        len(loader)
        if cfg.train.max_steps_per_epoch is None
        else min(len(loader), cfg.train.max_steps_per_epoch)
    )
    sums: dict[str, torch.Tensor] = {}
    images_seen, start = 0, time.perf_counter()
    guard = StepGuard(method.name, epoch, device, cfg.train.nonfinite_tolerance)
    bar = _progress(loader, steps, f"{method.name} epoch {epoch + 1}/{cfg.train.epochs}")
    for step, (views, labels) in enumerate(bar):
        if step >= steps:
            break
        lr = epoch_lr(cfg, epoch, step, steps)
        set_lr(optimizer, lr)
        views = [to_device(v, device, cfg.train.channels_last) for v in views]
        labels = labels.to(device, non_blocking=True)
        with autocast(device, cfg.train.amp):
            loss, stats = stepper(views, labels, ctx)
        guard.watch(step, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if guard.update_ok(step, stepper.parameters(), lr, cfg.train.amp):
            optimizer.step()
        guard.check(step, lr, cfg.train.amp)
        for k, v in stats.items():  # summed on device: no host sync per step
            sums[k] = sums.get(k, 0) + v.float()
        images_seen += labels.shape[0]
        if bar.disable is False and step % 10 == 0:
            rate = images_seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{stats['loss'].item():.3f}", img_s=f"{rate:.0f}")
    bar.close()
    guard.check(steps - 1, optimizer.param_groups[0]["lr"], cfg.train.amp, force=True)
    if device.type == "cuda":  # the rate counts the GPU's work, not just what was queued
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    # the job's figures: e.g. ExCon's accept rate averaged, its background count summed
    sums = distributed.reduce_over_ranks(sums, summed=COUNT_STATS)
    result = {f"train/{k}": (v / steps).item() for k, v in sums.items()}
    # every rank draws the same number of images: the job's rate is world_size times this one's
    result["train/images_per_s"] = images_seen * distributed.launched().world_size / elapsed
    result["train/lr"] = optimizer.param_groups[0]["lr"]
    if guard.tolerate:
        result["train/skipped_steps"] = float(guard.skipped)
    return result


def train_head_one_epoch(
    model: ExConNet,
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    epoch: int,
    classifier: nn.Module | None = None,
) -> dict[str, float]:
    """The reference's classifier epoch: frozen encoder in eval mode, linear head trained with
    cross-entropy on detached features of the CE augmentation, same SGD and schedule.
    `classifier`: the head as called (DDP-wrapped under torchrun); default model.classifier."""
    classifier = classifier if classifier is not None else model.classifier
    model.encoder.eval()
    model.classifier.train()
    steps = (
        len(loader)
        if cfg.train.max_steps_per_epoch is None
        else min(len(loader), cfg.train.max_steps_per_epoch)
    )
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    guard = StepGuard("the online head", epoch, device, cfg.train.nonfinite_tolerance)
    lr = 0.0
    for step, (views, labels) in enumerate(_progress(loader, steps, f"head epoch {epoch + 1}")):
        if step >= steps:
            break
        lr = epoch_lr(cfg, epoch, step, steps)
        set_lr(optimizer, lr)
        images, labels = (
            to_device(views[0], device, cfg.train.channels_last),
            labels.to(device, non_blocking=True),
        )
        with torch.no_grad(), autocast(device, cfg.train.amp):
            features = model.encoder(images)
        logits = classifier(features.float())
        loss = F.cross_entropy(logits, labels)
        guard.watch(step, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if guard.update_ok(step, classifier.parameters(), lr, cfg.train.amp):
            optimizer.step()
        guard.check(step, lr, cfg.train.amp)
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
    guard.check(steps - 1, lr, cfg.train.amp, force=True)
    totals = distributed.reduce_over_ranks({"loss": loss_sum / seen, "acc": correct.float() / seen})
    return {"head/loss": totals["loss"].item(), "head/acc": totals["acc"].item()}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, amp: bool
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and loss of encoder + linear head."""
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    for views, labels in loader:
        images, labels = views[0].to(device), labels.to(device)
        with autocast(device, amp):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += (topk[:, 0] == labels).sum().item()
        top5 += (topk == labels[:, None]).any(1).sum().item()
        seen += labels.shape[0]
    return {"loss": loss_sum / seen, "top1": top1 / seen, "top5": top5 / seen}


def write_saliency_grid(
    path: Path,
    model: ExConNet,
    gradcam: GradCam,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: Config,
    class_names: list[str],
    mean: list[float],
    std: list[float],
    title: str,
) -> None:
    """The per-epoch picture of ExCon's masking on fixed val images. Computed in eval mode so
    that looking at val images never changes BatchNorm statistics."""
    was_training = model.training
    model.eval()
    maps = gradcam(images, labels)
    masked = mask_images(images, keep_mask(maps, cfg.method.tau))
    with torch.no_grad():
        predicted = model(masked).argmax(1)
    save_saliency_grid(
        path,
        images,
        maps,
        masked,
        predicted == labels,
        labels,
        predicted,
        class_names,
        mean,
        std,
        title,
    )
    model.train(was_training)


def _grid_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """First image of each class in turn (round-robin), n in all: a fixed, varied set."""
    order = np.argsort(labels, kind="stable")
    ranks = np.empty_like(order)
    for c in np.unique(labels):
        idx = order[labels[order] == c]
        ranks[idx] = np.arange(len(idx))
    return np.lexsort((labels, ranks))[:n]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def changed_parameters(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Training parameters that differ between a checkpoint's config and `cfg`."""
    return [
        f"{s}.{k}"
        for s, sec in cfg.to_dict().items()
        if s in _TRAINING_SECTIONS
        for k, v in sec.items()
        if f"{s}.{k}" not in _RESUME_FREE and saved.get(s, {}).get(k) != v
    ]


def check_finite_epoch(model: nn.Module, row: dict[str, Any], cfg: Config, epoch: int) -> None:
    """Stop before the epoch's checkpoint when a weight, a buffer (BatchNorm statistics) or
    the scored split's loss is not finite: the previous checkpoint stays the last good one."""
    bad = nonfinite_tensors(model.state_dict())
    what = f"{len(bad)} weight tensors became non-finite (first: {bad[0]})" if bad else ""
    split = epoch_split(cfg)
    if not bad and not math.isfinite(row[f"{split}/loss"]):
        what = f"the {split} loss is not finite"
    if what:
        raise DivergenceError(
            f"{cfg.method.name} diverged at epoch {epoch + 1}: {what}; "
            f"{cause_hint(row.get('train/lr', cfg.optim.lr), cfg.train.amp)}. "
            "The last good checkpoint is kept"
        )


def view_kinds(method: Method, cfg: Config) -> tuple[list[str], list[str]]:
    """The view kinds of the method's batches and of the head epoch's. A classifier's images
    (kind "ce") become plain "standard" views when train.classifier_augment is off."""
    kind = "ce" if cfg.train.classifier_augment else "standard"
    return [kind if v == "ce" else v for v in method.views], [kind]


def protocol_record(cfg: Config, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The protocol, and under the reference one the online head's best test epoch: the
    figure the authors report (selected on test, so optimistic; the last epoch is the model)."""
    record: dict[str, Any] = {"protocol": cfg.study.protocol}
    if cfg.study.protocol == "reference":
        record["online_best"] = best_epoch(history, "test")
    return record


def run_fingerprint(data_dir: Path) -> dict[str, str]:
    """What else a resumed run must share with its checkpoint: the prepared data (its
    manifest lists every file's sha256) and the excon source code."""
    code = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        code.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    manifest = data_dir / "manifest.json"
    data = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else ""
    return {"data": data, "code": code.hexdigest()}


def _obsolete_reasons(ckpt: dict[str, Any], cfg: Config, fingerprint: dict[str, str]) -> list[str]:
    """Why a checkpoint cannot be continued as the run `cfg` (empty: it can)."""
    reasons = []
    changed = changed_parameters(ckpt["config"], cfg)
    if changed:
        reasons.append(f"trained with other parameters ({', '.join(changed)})")
    saved = ckpt.get("fingerprint", {})
    for part, label in (("data", "the prepared data"), ("code", "the excon code")):
        if saved.get(part) != fingerprint[part]:
            reasons.append(f"{label} changed since it was written")
    if saved.get("world_size") != fingerprint["world_size"]:
        reasons.append(
            f"trained on {saved.get('world_size', '?')} processes, not {fingerprint['world_size']}"
        )
    return reasons


def pretrain(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool | Literal["auto"] = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """Pre-train one method on a prepared dataset; returns the final summary.

    `run_dir` receives checkpoint.pt (every epoch, atomically), metrics.jsonl, model.safetensors
    + model.json and summary.json. With `resume`, training continues from checkpoint.pt and ends
    with the same weights as an uninterrupted run (each epoch's data order and augmentation
    depend only on (seed, epoch)). `resume="auto"` (what DVC runs) resumes a checkpoint trained
    with the same parameters and starts over when they changed. `on_epoch(row)` is called with
    each epoch's metrics once its checkpoint is on disk (tracking hooks in here).
    """
    run_dir = Path(run_dir)
    method = get_method(cfg.method.name)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    # Under torchrun: one process per GPU (or CPU process, gloo), each on its shard of the
    # global batch; rank 0 alone writes files. Joined here, left when pretrain returns.
    joined = not distributed.active()
    dist, device = distributed.setup(device)
    joined = joined and distributed.active()
    try:
        return _pretrain(cfg, Path(data_dir), run_dir, resume, on_epoch, method, device, dist)
    finally:
        if joined:
            distributed.teardown()


def _pretrain(
    cfg: Config,
    data_dir: Path,
    run_dir: Path,
    resume: bool | Literal["auto"],
    on_epoch: Callable[[dict[str, Any]], None] | None,
    method: Method,
    device: torch.device,
    dist: distributed.Context,
) -> dict:
    data = load_prepared(Path(data_dir))
    check_protocol(cfg, data)
    # the split scored after every epoch: val, or the test set under the reference protocol
    train_split, scored_split = data.split("train"), data.split(epoch_split(cfg))
    rank_batch = distributed.per_rank_batch(cfg.train.batch_size, dist)
    if len(train_split.labels) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training split "
            f"({len(train_split.labels)} images); lower it"
        )

    seed_everything(cfg.train.seed)
    model = ExConNet(
        data.num_classes, cfg.model.arch, cfg.model.width, data.channels, cfg.model.proj_dim
    ).to(device)
    if cfg.train.channels_last and not channels_last_safe(model, device):
        print("channels_last off: oneDNN crashes on convs this narrow on CPU", file=sys.stderr)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=False))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.compile and method.uses_saliency:
        # Seen with torch 2.14: a compiled encoder can run without captum's forward hook on
        # the explained layer ("Forward hook did not obtain any outputs"), so Grad-CAM breaks.
        raise ConfigError(
            "train.compile is not available for excon (Grad-CAM's layer hooks do not survive "
            "torch.compile); use it with ce or supcon, or leave it off"
        )
    if cfg.train.compile:
        # In place, so the optimiser, Grad-CAM's layer hooks and checkpoints keep seeing the
        # same module and parameter names (state_dict keys gain no `_orig_mod.` prefix).
        model.encoder.compile(dynamic=True)
    o = cfg.optim
    if method.head_in_objective:
        params = [*model.encoder.parameters(), *model.classifier.parameters()]
    else:
        params = [*model.encoder.parameters(), *model.projector.parameters()]
    optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    head_optimizer = None
    if not method.head_in_objective:
        head_params = model.classifier.parameters()
        if cfg.method.head_training == "online":
            optimizer.add_param_group({"params": list(head_params)})
        else:
            head_optimizer = torch.optim.SGD(
                head_params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )

    start_epoch, history = 0, []
    ckpt_path = run_dir / CHECKPOINT
    # a different number of processes shards, seeds and normalises (BatchNorm) differently
    fingerprint = {**run_fingerprint(Path(data_dir)), "world_size": str(dist.world_size)}
    if ckpt_path.exists():
        if not resume:
            raise ResumeError(
                f"{ckpt_path} exists; pass --resume to continue it, or --fresh to start over"
            )
        try:
            ckpt = artifacts.load_checkpoint(ckpt_path)
            obsolete = _obsolete_reasons(ckpt, cfg, fingerprint)
        except artifacts.UnreadableCheckpoint as e:
            obsolete = [str(e).split(";")[0]]
        if obsolete and resume == "auto":
            # DVC reruns the stage because a dependency changed: the old run is obsolete.
            print(f"{ckpt_path}: {'; '.join(obsolete)}; starting over", file=sys.stderr)
            ckpt_path.unlink(missing_ok=True)  # every rank may get here under torchrun
        elif obsolete:
            raise ResumeError(
                f"{ckpt_path}: {'; '.join(obsolete)}; restore them, or pass --fresh to start over"
            )
    if ckpt_path.exists():
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if head_optimizer is not None:
            head_optimizer.load_state_dict(ckpt["head_optimizer"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        print(f"resuming {run_dir} after epoch {start_epoch}", file=sys.stderr)
    distributed.check_same_on_all_ranks(start_epoch, "the epoch to start from", device)

    gradcam, grid = None, None
    if method.uses_saliency:
        layer = cfg.method.gradcam_layer or default_layer(cfg.model.arch, max(data.image_size))
        gradcam = GradCam(model, layer, cfg.method.relu_attributions)
        if cfg.method.grid_images > 0:
            idx = _grid_indices(scored_split.labels, cfg.method.grid_images)
            grid_ds = ViewDataset(
                scored_split.images[idx],
                scored_split.labels[idx],
                ["standard"],
                data.mean,
                data.std,
            )
            grid = (
                torch.stack([grid_ds[i][0][0] for i in range(len(idx))]).to(device),
                torch.from_numpy(scored_split.labels[idx]).to(device),
            )

    kw = {
        "seed": cfg.train.seed,
        "num_workers": cfg.data.num_workers,
        "pin_memory": device.type == "cuda",
    }
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    stepper: nn.Module = StepModule(
        model, method, trained_modules(model, method, cfg.method.head_training)
    )
    head: nn.Module = model.classifier
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        stepper = DDP(stepper, device_ids=ids)
        if head_optimizer is not None:
            head = DDP(model.classifier, device_ids=ids)
    views, head_views = view_kinds(method, cfg)
    if cfg.train.augment == "device":  # whole batches augmented on the device (kornia)
        from excon.data.device_views import DeviceBatches

        train_dev = DeviceBatches(
            train_split.images, train_split.labels, views, data.mean, data.std, device
        )
        head_dev = DeviceBatches(
            train_split.images, train_split.labels, head_views, data.mean, data.std, device
        )
        train_ds = head_ds = None
    else:  # per image in the DataLoader (workers), as the reference
        train_ds = ViewDataset(train_split.images, train_split.labels, views, data.mean, data.std)
        head_ds = ViewDataset(
            train_split.images, train_split.labels, head_views, data.mean, data.std
        )

    def epoch_batches(which: str, epoch: int) -> Any:
        if cfg.train.augment == "device":
            source = train_dev if which == "train" else head_dev
            return source.epoch(rank_batch, train=True, epoch=epoch, **kw, **shard)
        dataset = train_ds if which == "train" else head_ds
        return make_loader(dataset, rank_batch, train=True, epoch=epoch, **kw, **shard)

    scored_ds = ViewDataset(
        scored_split.images, scored_split.labels, ["standard"], data.mean, data.std
    )
    scored_loader = make_loader(scored_ds, cfg.train.batch_size, train=False, **kw)

    for epoch in range(start_epoch, cfg.train.epochs):
        # Global RNG re-seeded per epoch: augmentations in the main process replay after resume
        # (per rank: each rank augments its own shard).
        torch.manual_seed(stream_seed(cfg.train.seed, "augment", epoch, dist.rank))
        loader = epoch_batches("train", epoch)
        epoch_start = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1}
        ctx = StepContext(cfg.method, epoch, data.num_classes, gradcam, cfg.train.bn)
        row.update(
            train_one_epoch(model, method, cfg, ctx, optimizer, loader, device, epoch, stepper)
        )
        if head_optimizer is not None:
            head_loader = epoch_batches("head", epoch)
            row.update(
                train_head_one_epoch(
                    model, cfg, head_optimizer, head_loader, device, epoch, classifier=head
                )
            )
        scored = evaluate(model, scored_loader, device, cfg.train.amp)
        row.update({f"{epoch_split(cfg)}/{k}": v for k, v in scored.items()})
        row["time/epoch_s"] = time.perf_counter() - epoch_start
        check_finite_epoch(model, row, cfg, epoch)
        if not dist.is_main:  # the other ranks only train; rank 0 writes for the job
            history.append(row)
            distributed.barrier()
            continue
        if grid is not None and gradcam is not None:
            write_saliency_grid(
                run_dir / FIGURES / f"saliency_epoch_{epoch + 1:03d}.png",
                model,
                gradcam,
                *grid,
                cfg,
                data.class_names,
                data.mean,
                data.std,
                title=f"{method.name} epoch {epoch + 1}: Grad-CAM at {gradcam.layer_name}, "
                f"tau {cfg.method.tau}",
            )
        history.append(row)
        artifacts.save_checkpoint(
            ckpt_path,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "head_optimizer": head_optimizer.state_dict() if head_optimizer else None,
                "scheduler": {"kind": "cosine-per-epoch", "next_epoch": epoch + 1},
                "rng": _rng_state(),
                "history": history,
                "config": cfg.to_dict(),
                "fingerprint": fingerprint,
            },
        )
        artifacts.write_jsonl(run_dir / METRICS_LOG, history)
        artifacts.write_csv(run_dir / CURVES, history)
        save_training_curves(run_dir / FIGURES / "training.png", history, method.name)
        if on_epoch is not None:
            on_epoch(row)
        print(
            f"[{method.name}] epoch {epoch + 1}/{cfg.train.epochs} "
            f"loss {row['train/loss']:.4f} "
            f"{epoch_split(cfg)}/top1 {row[f'{epoch_split(cfg)}/top1']:.4f} "
            f"{row['train/images_per_s']:.0f} img/s",
            file=sys.stderr,
            flush=True,
        )
        distributed.barrier()  # no rank runs ahead of a checkpoint still being written

    meta = artifacts.model_meta(
        cfg.model,
        data.num_classes,
        data.channels,
        {
            "dataset": data.manifest["dataset"],
            "class_names": data.class_names,
            "mean": list(data.mean),
            "std": list(data.std),
            "image_size": list(data.image_size),
            "method": method.name,
            # the layer excon explained during training; evaluation explains at the same one
            "gradcam_layer": gradcam.layer_name if gradcam is not None else None,
            # evaluation and the probe read how this run was selected from here
            **protocol_record(cfg, history),
        },
    )
    summary = {
        "method": method.name,
        "epochs": cfg.train.epochs,
        "train_seconds": sum(r["time/epoch_s"] for r in history),
        **history[-1],
        **protocol_record(cfg, history),
    }
    if dist.is_main:
        artifacts.save_model(run_dir, model, meta)
        artifacts.write_json(run_dir / CONFIG, cfg.to_dict())
        artifacts.write_json(run_dir / SUMMARY, summary)
    distributed.barrier()
    return summary
