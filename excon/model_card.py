"""The model card of a registered version: markdown, written when the version is registered,
set as its description in the registry and logged as `model_card.md` of its register run.

What it says comes from what registration holds: model.json (architecture, classes, size, the
Grad-CAM layer), the version's tags (weights and data hashes, evaluation settings, the gate's
decision and reasons), the run's evaluation metrics, the resolved config (the recipe) and, when
the study's report.json sits beside the run, each metric's mean and 95 % interval over the
method's seeds and the report's verdicts on the paper's claims.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from excon.config import Config

# Headline metrics, in the card's order: the gate's four first.
METRICS = (
    ("test/top1", "test accuracy (top-1)"),
    ("test/top5", "test accuracy (top-5)"),
    ("calib/ece", "expected calibration error (10 bins)"),
    ("calib/nll", "negative log-likelihood"),
    ("adv/fgsm/eps4/acc", "FGSM accuracy, eps 4/255"),
    ("adv/pgd/eps4/acc", "PGD accuracy, eps 4/255"),
    ("shift/mean/acc", "accuracy under corruption shift (mean)"),
    ("expl/avg_drop", "Grad-CAM average drop (lower is better)"),
    ("expl/increase", "Grad-CAM increase in confidence"),
)
RECIPE = {
    "method": ("name", "temperature", "tau", "exp_epochs", "negative_pair"),
    "model": ("arch", "width", "proj_dim"),
    "train": ("epochs", "batch_size", "seed", "augment"),
    "optim": ("lr", "momentum", "weight_decay", "min_lr_ratio"),
    "probe": ("epochs", "lrs"),
}


def _num(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:.4f}" if math.isfinite(x) else "n/a"


def _interval(stat: dict | None) -> str:
    if not stat:
        return "not in the report"
    low, high = stat.get("low"), stat.get("high")
    bounds = f" [{_num(low)}, {_num(high)}]" if low is not None and high is not None else ""
    return f"{_num(stat.get('mean'))}{bounds} (n={stat.get('n', '?')})"


def _metrics(metrics: dict, report: dict | None, method: str) -> list[str]:
    per_method = ((report or {}).get("methods") or {}).get(method) or {}
    lines = [
        f"| metric | this version | {method} over the study's seeds: mean [95 % interval] |",
        "|---|---|---|",
    ]
    for key, label in METRICS:
        if key in metrics or key in per_method:
            value = _num(metrics.get(key))
            lines.append(f"| {label} (`{key}`) | {value} | {_interval(per_method.get(key))} |")
    if report is None:
        lines += ["", "No report.json beside the run: intervals over seeds not available."]
    return lines


def _claims(report: dict | None) -> list[str]:
    claims = (report or {}).get("claims")
    if not claims:
        return []
    lines = ["", f"The study supports {claims.get('supported')} of the paper's "
             f"{claims.get('of')} claims (95 % paired-bootstrap intervals):"]  # fmt: skip
    lines += [f"- {c.get('title', c.get('name'))}: {c.get('verdict')}" for c in claims["each"]]
    return lines


def _recipe(cfg: Config) -> list[str]:
    lines = []
    for section, keys in RECIPE.items():
        values = dataclasses.asdict(getattr(cfg, section))
        shown = ", ".join(f"{k} {values[k]}" for k in keys if k in values)
        lines.append(f"- {section}: {shown}")
    return lines


def model_card(
    name: str,
    version: int,
    meta: dict,
    metrics: dict,
    tags: dict[str, str],
    decision: str,
    reasons: list[str],
    cfg: Config,
    report: dict | None = None,
) -> str:
    """The card as markdown (see the module docstring for where each part comes from)."""
    method = str(meta.get("method") or cfg.method.name)
    size = meta.get("image_size")
    classes = list(meta.get("class_names") or [])
    shown = ", ".join(classes[:20]) + (f" … ({len(classes)} in all)" if len(classes) > 20 else "")
    layer = meta.get("gradcam_layer") or "the reference's default for the architecture and size"
    lines = [
        f"# {name} version {version}",
        "",
        f"**Gate decision: {decision}**",
        *(f"- {r}" for r in reasons),
        "",
        "## Model",
        f"- {method} pre-training, {meta.get('arch')} (width {meta.get('width')}), linear probe "
        f"head selected on validation; {meta.get('num_classes')} classes at {size} px, "
        f"{meta.get('in_channels')} channel(s)",
        f"- Grad-CAM layer: {layer}",
        f"- weights sha256: `{tags.get('excon.weights_sha256', 'n/a')}`",
        "",
        "## Data",
        f"- dataset: {meta.get('dataset')}; classes: {shown}",
        f"- data hash (of the prepared dataset): `{tags.get('excon.data_hash', 'not recorded')}`",
        f"- evaluation settings digest: `{tags.get('excon.eval_settings', 'n/a')}` "
        "(versions are compared only when data hash and settings agree)",
        "",
        "## Intended use",
        f"Research on explanation-driven supervised contrastive learning (ExCon): classifying "
        f"images like those of {meta.get('dataset')} into its {meta.get('num_classes')} classes, "
        "with a Grad-CAM map of the evidence for each answer (`excon serve`, `excon explain`). "
        "Not for decisions about people, safety-critical use, or inputs outside these classes.",
        "",
        "## Recipe",
        *_recipe(cfg),
        "",
        "## Metrics",
        *_metrics(metrics, report, method),
        *_claims(report),
        "",
        "## Known limitations",
        f"- Every input is resized to {size} px as the training images were: detail in larger "
        "images is lost, and other aspect ratios are distorted.",
        "- The classes are closed: an image of anything else still gets one of them, often with "
        "high confidence; calibration is measured in distribution and degrades under shift.",
        "- Adversarial robustness is limited (see the FGSM/PGD rows): small crafted "
        "perturbations change answers.",
        "- Grad-CAM is coarse (the layer's grid, upsampled) and shows where the classifier's "
        "evidence lies, not why; it can highlight background.",
        "- Metrics of one version are one seed's; the intervals above are the method's spread.",
    ]
    return "\n".join(lines) + "\n"
