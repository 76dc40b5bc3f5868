"""`excon evaluate`: the paper's four claims measured for one trained model.

The evaluated classifier is encoder + the val-selected linear probe (`probe_head.safetensors`),
the same for every method, and the online head's accuracy is reported beside it; with
`eval.head: online`, as the reference, every part scores the head co-trained with the encoder.
Everything runs on the test split, once, in eval mode. Three parts, each its own DAG stage:
`calibration` (accuracy, calibration clean and under shift), `robustness` (FGSM/PGD) and
`explanations` (Grad-CAM quality).
Part P writes `<run>/eval/P/`: metrics.json (flat keys, see README), per_image.npz (the values the
report bootstraps over test images, see per_image.py), CSVs for `dvc plots`, PNGs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from excon import artifacts
from excon.config import Config, ConfigError, EvalConfig
from excon.data.prepared import PreparedDataset, Split, load_prepared
from excon.evaluate import (
    EVAL_DIR,
    EVAL_METRICS,
    PARTS,
    calibration,
    explanations,
    per_image,
    robustness,
    shift,
)
from excon.evaluate.plots import line_plot
from excon.models import ExConNet
from excon.perf import tune_cpu_allocator
from excon.plots import save_saliency_grid
from excon.probe import load_probe_head, topk_accuracy
from excon.saliency import GradCam, default_layer, mask_images
from excon.train import CONFIG, resolve_device


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def normalise(
    images: np.ndarray, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on the device (the 'standard' view)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255
    m = torch.tensor(mean, device=device)[:, None, None]
    s = torch.tensor(std, device=device)[:, None, None]
    return (x - m) / s


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    data: PreparedDataset,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(labels), batch_size):
        x = normalise(images[i : i + batch_size], data.mean, data.std, device)
        yield x, torch.from_numpy(np.asarray(labels[i : i + batch_size], dtype=np.int64)).to(device)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    data: PreparedDataset,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, ys = [], []
    for x, y in batches(images, labels, data, batch_size, device):
        logits.append(model(x).float())
        ys.append(y)
    return torch.cat(logits), torch.cat(ys)


def subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """A fixed, seeded subset of indices (sorted), or all of them."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    artifacts.write_text(path, buf.getvalue())


def _eps_key(eps: float) -> str:
    return f"eps{int(eps)}" if float(eps).is_integer() else f"eps{eps:g}"


def corruption_names(cfg: Config) -> list[str]:
    names = list(cfg.eval.corruptions or shift.BENCHMARK_CORRUPTIONS)
    if cfg.eval.extra_corruptions:
        names += [n for n in shift.EXTRA_CORRUPTIONS if n not in names]
    known = set(shift.BENCHMARK_CORRUPTIONS) | set(shift.EXTRA_CORRUPTIONS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"eval.corruptions: unknown {unknown} (allowed: {', '.join(sorted(known))})"
        )
    return names


def evaluate_shift(
    model: torch.nn.Module, cfg: Config, data: PreparedDataset, device: torch.device, out: Path
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Accuracy, ECE and NLL per corruption set and averaged; and the per-image values
    (`shift_*` of per_image.py) the report bootstraps."""
    e = cfg.eval
    test = data.split("test")
    idx = subset(len(test.labels), e.shift_images, e.seed)
    released = None
    if e.cifar100c_dir and data.manifest["dataset"] == "cifar100":
        released = set(shift.cifar100c_available(Path(e.cifar100c_dir)))
    note = (
        f"{len(idx)} of {len(test.labels)} test images"
        if len(idx) < len(test.labels)
        else "all test images"
    )
    _log(f"distribution shift: {note} per corrupted set (eval.shift_images)")
    source_key = hashlib.sha256(
        (data.manifest["files"]["test_images.npy"] + idx.tobytes().hex()).encode()
    ).hexdigest()[:16]
    cache = Path(e.shift_cache) / data.manifest["dataset"]
    metrics: dict[str, float] = {}
    rows = []
    per_set: list[dict[str, torch.Tensor]] = []
    for name in corruption_names(cfg):
        for sev in e.severities:
            if released is not None and name in released:
                images, labels = shift.read_cifar100c(Path(e.cifar100c_dir), name, sev)
                pick = subset(len(labels), e.shift_images, e.seed)
                images, labels = np.asarray(images[pick]), np.asarray(labels[pick])
                source = "cifar100-c"
            else:
                images, labels = shift.shift_set(
                    cache, test.images[idx], test.labels[idx], name, sev, e.seed, source_key
                )
                source = "generated"
            logits, y = predict(model, images, labels, data, e.batch_size, device)
            m = calibration.calibration_metrics(logits, y, e.n_bins)
            per_set.append(per_image.classifier_values(logits, y))
            for k in ("acc", "ece", "nll"):
                metrics[f"shift/{name}/{sev}/{k}"] = m[k]
            rows.append([name, sev, m["acc"], m["ece"], m["nll"], source])
    for k in ("acc", "ece", "nll"):
        col = {"acc": 2, "ece": 3, "nll": 4}[k]
        metrics[f"shift/mean/{k}"] = float(np.mean([r[col] for r in rows]))
        for sev in e.severities:
            metrics[f"shift/sev{sev}/{k}"] = float(np.mean([r[col] for r in rows if r[1] == sev]))
    write_csv(out / "shift.csv", ["corruption", "severity", "acc", "ece", "nll", "source"], rows)
    for k, label in (("ece", "ECE"), ("acc", "accuracy")):
        line_plot(
            out / f"shift_{k}.png",
            {"mean": [(s, metrics[f"shift/sev{s}/{k}"]) for s in e.severities]},
            "corruption severity",
            label,
            f"{label} under corruption (mean over {len(rows) // len(e.severities)} corruptions)",
        )
    arrays = {
        f"shift_{k}": torch.stack([v[k] for v in per_set]).cpu().numpy()
        for k in ("correct", "confidence", "nll")
    }
    arrays["shift_set"] = np.array([f"{r[0]}/{r[1]}" for r in rows])
    # Row i of a released CIFAR-100-C set is its image pick[i] (= idx[i] unless the test split
    # was cut by limit_per_class); pick depends on no method, so rows still pair across runs.
    return metrics, {"shift_index": idx, **arrays}


def evaluate(
    cfg: Config, data_dir: str | Path, run_dir: str | Path, parts: Sequence[str] = PARTS
) -> dict:
    """Evaluate the run in `run_dir` on the prepared data, one part at a time.

    Each part writes `<run>/eval/<part>/metrics.json` (+ CSVs, PNGs) on its own, so the three can
    run as parallel DAG stages (dvc.yaml, the KFP pipeline); `load_eval_metrics` merges them.
    Returns the merged metrics of the parts run here."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"evaluation parts: got {list(parts)}, allowed {', '.join(PARTS)}")
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    model, meta = artifacts.load_model(run_dir, device)
    model.eval()
    online_head = model.classifier
    if cfg.eval.head == "probe":
        model.classifier = load_probe_head(run_dir, device)
    data = load_prepared(Path(data_dir))
    ident: dict = {
        "method": meta.get("method", "unknown"),
        "dataset": meta.get("dataset"),
        "head": cfg.eval.head,
        # how the run was selected (written by pretrain; older runs: the heldout protocol)
        "protocol": meta.get("protocol", "heldout"),
    }
    ckpt_seed = _train_seed(run_dir)
    if ckpt_seed is not None:
        ident["seed"] = ckpt_seed
    merged = dict(ident)
    for part in PARTS:  # a fixed order, whatever order was asked
        if part not in parts:
            continue
        torch.manual_seed(cfg.eval.seed)  # each part alone gives what it gives in a full run
        start = time.perf_counter()
        out = run_dir / EVAL_DIR / part
        if part == "calibration":
            metrics = _calibration_part(model, online_head, cfg, data, device, out, ident["method"])
            metrics |= selected_on_test(meta)
        elif part == "robustness":
            metrics = _robustness_part(model, cfg, data, device, out, ident["method"])
        else:
            metrics = _explanations_part(model, meta, cfg, data, device, out, ident["method"])
        metrics = {**ident, **metrics}
        artifacts.write_json(out / EVAL_METRICS, metrics)
        _log(f"{part}: done in {time.perf_counter() - start:.0f} s -> {out}")
        merged.update(metrics)
    return merged


def _calibration_part(
    model: ExConNet,
    online_head: torch.nn.Module,
    cfg: Config,
    data: PreparedDataset,
    device: torch.device,
    out: Path,
    method: str,
) -> dict[str, float]:
    """Accuracy of the scored head (eval.head) and the online head; calibration, clean and
    under shift."""
    e = cfg.eval
    test = data.split("test")
    metrics: dict[str, float] = {}
    logits, y = predict(model, test.images, test.labels, data, e.batch_size, device)
    metrics["test/top1"] = topk_accuracy(logits, y, 1)
    metrics["test/top5"] = topk_accuracy(logits, y, 5)
    probe_head = model.classifier
    model.classifier = online_head
    try:
        online_logits, _ = predict(model, test.images, test.labels, data, e.batch_size, device)
    finally:
        model.classifier = probe_head
    metrics["online/top1"] = topk_accuracy(online_logits, y, 1)
    metrics["online/top5"] = topk_accuracy(online_logits, y, 5)
    clean = calibration.calibration_metrics(logits, y, e.n_bins)
    metrics.update({f"calib/{k}": v for k, v in clean.items() if k != "acc"})
    bins = calibration.reliability_bins(torch.softmax(logits, 1), y, e.n_bins)
    write_csv(
        out / "reliability.csv",
        ["bin", "lower", "upper", "confidence", "accuracy", "count"],
        [
            [i, *(float(bins[k][i]) for k in ("lower", "upper", "confidence", "accuracy", "count"))]
            for i in range(e.n_bins)
        ],
    )
    calibration.plot_reliability(bins, out / "reliability.png", f"{method}: clean test")
    _log(
        f"accuracy + calibration: test/top1 {metrics['test/top1']:.4f} "
        f"ECE {metrics['calib/ece']:.4f}"
    )
    shifted, shift_arrays = evaluate_shift(model, cfg, data, device, out)
    metrics.update(shifted)
    values = per_image.classifier_values(logits, y)
    values["online_correct"] = per_image.classifier_values(online_logits, y)["correct"]
    ident = {"index": np.arange(len(y)), "n_bins": e.n_bins}
    per_image.save(out, {**ident, **values, **shift_arrays})
    _log(
        f"shift: mean acc {metrics['shift/mean/acc']:.4f} mean ECE {metrics['shift/mean/ece']:.4f}"
    )
    return metrics


def _robustness_part(
    model: ExConNet,
    cfg: Config,
    data: PreparedDataset,
    device: torch.device,
    out: Path,
    method: str,
) -> dict[str, float]:
    """FGSM and PGD accuracy and ECE per eps."""
    e = cfg.eval
    test = data.split("test")
    idx = subset(len(test.labels), e.attack_images, e.seed)
    if len(idx) < len(test.labels):
        _log(f"attacks on {len(idx)} of {len(test.labels)} test images (eval.attack_images)")
    probs, labels = robustness.attack_probs(
        model,
        list(batches(test.images[idx], test.labels[idx], data, e.batch_size, device)),
        e.eps,
        data.mean,
        data.std,
        device=device,
        steps=e.pgd_steps,
        seed=e.seed,
    )
    adv = robustness.metrics_of_probs(probs, labels, e.n_bins)
    _save_attack_values(out, idx, e.eps, e.n_bins, probs, labels)
    rows = [
        [
            attack,
            eps,
            adv[f"adv/{attack}/{_eps_key(eps)}/acc"],
            adv[f"adv/{attack}/{_eps_key(eps)}/ece"],
        ]
        for attack in ("fgsm", "pgd")
        for eps in e.eps
    ]
    write_csv(out / "robustness.csv", ["attack", "eps", "acc", "ece"], rows)
    line_plot(
        out / "robustness.png",
        {a: [(r[1], r[2]) for r in rows if r[0] == a] for a in ("fgsm", "pgd")},
        "eps (/255)",
        "accuracy",
        f"{method}: accuracy under L-inf attacks",
    )
    return adv


def _save_attack_values(
    out: Path,
    idx: np.ndarray,
    eps: Sequence[float],
    n_bins: int,
    probs: robustness.AttackProbs,
    labels: torch.Tensor,
) -> None:
    """Per-image correctness and confidence per attack and eps, rows in `eps` order."""
    arrays: dict[str, np.ndarray | torch.Tensor] = {
        "index": idx,
        "eps": np.asarray(eps, float),
        "n_bins": n_bins,
    }
    for attack in ("fgsm", "pgd"):
        values = [per_image.top1_values(probs[(attack, x)], labels) for x in eps]
        for k in ("correct", "confidence"):
            arrays[f"{attack}_{k}"] = torch.stack([v[k] for v in values])
    per_image.save(out, arrays)


def _explanations_part(
    model: ExConNet,
    meta: dict,
    cfg: Config,
    data: PreparedDataset,
    device: torch.device,
    out: Path,
    method: str,
) -> dict[str, float]:
    """Grad-CAM of the predicted class, at the training layer: drop/increase, deletion/insertion,
    pointing games."""
    e = cfg.eval
    test = data.split("test")
    layer = meta.get("gradcam_layer") or default_layer(meta["arch"], max(meta["image_size"]))
    gradcam = GradCam(model, layer)
    idx = subset(len(test.labels), e.expl_images, e.seed)
    masks = _localisation_masks(test, data, idx)
    expl_batches = []
    for i, (x, yb) in enumerate(
        batches(test.images[idx], test.labels[idx], data, e.batch_size, device)
    ):
        mb = None if masks is None else masks[i * e.batch_size : (i + 1) * e.batch_size].to(device)
        expl_batches.append((x, yb, mb))
    terms = explanations.explanation_terms(
        model, gradcam, expl_batches, top_frac=e.top_frac, steps=e.deletion_steps, device=device
    )
    metrics = explanations.metrics_of_terms(terms)
    per_image.save(out, {"index": idx, **terms})
    if e.grid_images > 0:
        _saliency_grid(model, gradcam, test, data, e, out / "saliency_test.png", method)
    _log(
        f"explanations at {layer}: avg drop {metrics['expl/avg_drop']:.4f} "
        f"increase {metrics['expl/increase']:.4f}"
    )
    return metrics


def selected_on_test(meta: dict) -> dict[str, float]:
    """Under the reference protocol, the online head's best test epoch as pretrain recorded it:
    the figure the authors report. Selected on test, so it is reported beside the last epoch's
    (`online/top1`, the model evaluated here), never instead of it."""
    best = meta.get("online_best")
    if not best:
        return {}
    return {"online/top1_best_epoch": best["top1"], "online/best_epoch": best["epoch"]}


def _train_seed(run_dir: Path) -> int | None:
    """The run's training seed (from the config.json `pretrain` writes), for mean ± std."""
    path = run_dir / CONFIG
    if path.is_file():
        return json.loads(path.read_text()).get("train", {}).get("seed")
    return None


def _localisation_masks(test: Split, data: PreparedDataset, idx: np.ndarray) -> torch.Tensor | None:
    """Ground-truth foreground for the pointing games: silhouettes or Tiny ImageNet boxes."""
    if test.masks is not None:
        return torch.from_numpy(np.asarray(test.masks[idx]) > 0)
    if test.boxes is not None:
        h, w = data.image_size
        return explanations.boxes_to_masks(torch.from_numpy(np.asarray(test.boxes[idx])), (h, w))
    return None


def _saliency_grid(
    model: ExConNet,
    gradcam: GradCam,
    test: Split,
    data: PreparedDataset,
    e: EvalConfig,
    path: Path,
    method: str,
) -> None:
    idx = subset(len(test.labels), e.grid_images, e.seed + 1)
    device = next(model.parameters()).device
    x = normalise(test.images[idx], data.mean, data.std, device)
    y = torch.from_numpy(test.labels[idx]).to(device)
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = gradcam(x, pred)
    kept = mask_images(x, explanations.keep_top_fraction(maps, e.top_frac))
    with torch.no_grad():
        pred_kept = model(kept).argmax(1)
    save_saliency_grid(
        path,
        x,
        maps,
        kept,
        pred_kept == pred,
        y,
        pred_kept,
        data.class_names,
        data.mean,
        data.std,
        title=f"{method}: Grad-CAM of the predicted class, top {e.top_frac:.0%} kept",
        ok_label="prediction kept",
        fail_label="changed to",
    )
