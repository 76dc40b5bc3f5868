"""Linear probe: a linear classifier on frozen encoder features, selected on val.

Features are extracted once from the standard (un-augmented) view, so the probe is a few
seconds of work on features instead of the reference's 100 augmented epochs through the
encoder; every (lr, epoch) candidate is scored on val and only the best one sees the test split.
Under the reference protocol (no val split) the candidates are scored on test, as the authors'
main_linear.py does; the metrics then say so (`probe/selected_on`) and add the last epoch's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from excon import artifacts
from excon.config import Config, ConfigError
from excon.data.prepared import load_prepared
from excon.data.views import ViewDataset, make_loader
from excon.guard import DivergenceError, UnusableModel, refuse_nonfinite
from excon.seeds import stream_seed
from excon.train import autocast, resolve_device

METRICS = "metrics.json"
PROBE_HEAD = "probe_head.safetensors"  # the val-selected linear head, standardisation folded in


@torch.no_grad()
def extract_features(
    encoder: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    encoder.eval()
    feats, labels = [], []
    for views, y in loader:
        with autocast(device, amp):
            feats.append(encoder(views[0].to(device)).float())
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()


def fit_linear(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    lr: float,
    cfg: Config,
    last: dict[str, float] | None = None,
) -> tuple[nn.Linear, float, int]:
    """SGD + cosine on fixed features; returns the head at its best epoch on (val_x, val_y), the
    selection split. `last`, when given, receives the last epoch's accuracy there ("top1")."""
    p = cfg.probe
    generator = torch.Generator(device="cpu").manual_seed(
        stream_seed(cfg.train.seed, "probe_order")
    )
    torch.manual_seed(stream_seed(cfg.train.seed, "probe_init"))
    head = nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    opt = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
    best_acc, best_epoch, best_state = -1.0, 0, None
    n = train_x.shape[0]
    for epoch in range(p.epochs):
        head.train()
        order = torch.randperm(n, generator=generator).to(train_x.device)
        finite = torch.ones((), dtype=torch.bool, device=train_x.device)
        for i in range(0, n, p.batch_size):
            idx = order[i : i + p.batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            finite &= torch.isfinite(loss.detach())  # read once per epoch: no sync per step
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if not finite.item():  # this lr diverged: its earlier epochs may still be the best
            print(
                f"probe lr={lr:g}: non-finite loss at epoch {epoch + 1}; stopped", file=sys.stderr
            )
            break
        with torch.no_grad():
            acc = topk_accuracy(head(val_x), val_y, 1)
        if last is not None:
            last["top1"] = acc
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    if best_state is None:  # diverged in its first epoch
        return head, -1.0, 0
    head.load_state_dict(best_state)
    return head, best_acc, best_epoch


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def probe(
    cfg: Config, data_dir: str | Path, run_dir: str | Path, out: str | Path | None = None
) -> dict:
    """Probe the encoder of `run_dir`; writes `metrics.json` (val- and test-split top-1/top-5)."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    model, meta = artifacts.load_model(run_dir, device)
    data = load_prepared(Path(data_dir))
    feats = {}
    for split in ("train", "val", "test"):
        s = data.split(split)
        if len(s.labels) == 0:  # no val split under the reference protocol
            continue
        ds = ViewDataset(s.images, s.labels, ["standard"], data.mean, data.std)
        loader = make_loader(
            ds, cfg.probe.batch_size, train=False, num_workers=cfg.data.num_workers
        )
        # fp32 even on CUDA: evaluation scores encoder + probe in fp32, and must agree.
        feats[split] = extract_features(model.encoder, loader, device, amp=False)
    bad = [k for k, (f, _) in feats.items() if not torch.isfinite(f).all()]
    if bad:
        raise UnusableModel(
            f"{run_dir}: the encoder's {', '.join(bad)} features are not finite; retrain it"
        )
    # Standardising with train statistics makes one lr grid fit every method's feature scale.
    mu = feats["train"][0].mean(0)
    sd = feats["train"][0].std(0).clamp(min=1e-6)
    x = {k: _standardise(v[0], mu, sd) for k, v in feats.items()}
    y = {k: v[1] for k, v in feats.items()}

    # the split that selects (lr, epoch): val; the test set under the reference protocol
    sel = "test" if meta.get("protocol") == "reference" else "val"
    if sel not in x:  # pretrain refuses this pairing; a model trained on other data may not
        raise ConfigError(
            f"{data_dir}: no val split to select the probe on; {run_dir} was "
            "trained under study.protocol=heldout, which needs one"
        )
    best: tuple[float, float, int, nn.Linear, float] | None = None
    for lr in cfg.probe.lrs:
        last: dict[str, float] = {}
        head, acc, epoch = fit_linear(
            x["train"], y["train"], x[sel], y[sel], data.num_classes, lr, cfg, last
        )
        print(f"probe lr={lr:g}: best {sel}/top1 {acc:.4f} at epoch {epoch}", file=sys.stderr)
        if best is None or acc > best[0]:
            best = (acc, lr, epoch, head, last.get("top1", math.nan))
    assert best is not None
    if best[2] == 0:
        raise DivergenceError(
            f"the probe diverged at every lr of probe.lrs {cfg.probe.lrs}; lower them"
        )
    _, lr, epoch, head, last_acc = best
    with torch.no_grad():
        logits = {k: head(x[k]) for k in ("val", "test") if k in x}
    metrics: dict = {
        f"{k}/top{n}": topk_accuracy(v, y[k], n) for k, v in logits.items() for n in (1, 5)
    }
    metrics |= {"probe/lr": lr, "probe/epoch": epoch, "probe/selected_on": sel}
    if sel == "test":  # test/top1 is then optimistic: the last epoch's is beside it
        metrics["test/top1_last_epoch"] = last_acc
    metrics["method"] = meta.get("method", "unknown")
    save_probe_head(run_dir, fold_standardisation(head, mu, sd))
    artifacts.write_json(Path(out) if out is not None else run_dir / METRICS, metrics)
    return metrics


def fold_standardisation(head: nn.Linear, mu: torch.Tensor, sd: torch.Tensor) -> nn.Linear:
    """W((x - mu) / sd) + b as one Linear on raw features, so encoder + probe is a plain
    classifier that evaluation, attacks and Grad-CAM use like any other head."""
    folded = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        folded.weight.copy_(head.weight / sd)
        folded.bias.copy_(head.bias - folded.weight @ mu)
    return folded.cpu()


def save_probe_head(run_dir: Path, head: nn.Linear) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with artifacts.atomic_path(run_dir / PROBE_HEAD) as tmp:
        save_file(state, str(tmp))


def load_probe_head(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Linear:
    path = Path(run_dir) / PROBE_HEAD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `excon probe` for this run first")
    state = load_file(str(path), device="cpu")
    refuse_nonfinite(state, str(path))
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.to(device)
