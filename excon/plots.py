"""Figures written during training (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers, CI or pods
import matplotlib.pyplot as plt
import torch

from excon.artifacts import atomic_path


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> None:
    """Write a PNG atomically (temp file + rename) and free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised [B, C, H, W] -> [B, H, W, C] in [0, 1] for display."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    s = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * s + m).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()


def save_saliency_grid(
    path: str | Path,
    images: torch.Tensor,
    maps: torch.Tensor,
    masked: torch.Tensor,
    accepted: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    title: str = "",
    ok_label: str = "accepted",
    fail_label: str = "rejected",
) -> None:
    """One row per image: the image, its Grad-CAM map, the masked image, and whether the head
    accepted the masked view (predicted the true class on it)."""
    n = images.shape[0]
    # numpy for matplotlib (it warns on tensors)
    shown = denormalise(images, mean, std).numpy()
    shown_masked = denormalise(masked, mean, std).numpy()
    maps = maps.float().cpu().numpy()
    cmap = "gray" if shown.shape[-1] == 1 else None
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        ax_img, ax_map, ax_mask = axes[i]
        ax_img.imshow(shown[i].squeeze(-1) if cmap else shown[i], cmap=cmap)
        ax_img.set_title(class_names[int(labels[i])], fontsize=8)
        ax_map.imshow(maps[i, 0], cmap="jet")
        ax_map.set_title("Grad-CAM", fontsize=8)
        ax_mask.imshow(shown_masked[i].squeeze(-1) if cmap else shown_masked[i], cmap=cmap)
        ok = bool(accepted[i])
        verdict = ok_label if ok else f"{fail_label}: {class_names[int(predicted[i])]}"
        ax_mask.set_title(verdict, fontsize=8, color="green" if ok else "red")
        for ax in axes[i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=80)


def save_training_curves(path: str | Path, history: Sequence[dict], method: str) -> None:
    """Loss and val (or, under the reference protocol, test) top-1 of the online head per
    epoch: the run at a glance."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3))
    ax_loss.plot(epochs, [r["train/loss"] for r in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    split = "val" if "val/top1" in history[-1] else "test"  # test: the reference protocol
    top1 = [r[f"{split}/top1"] for r in history]
    ax_acc.plot(epochs, top1, marker="o", label=f"online head ({split})")
    if "train/accept_rate" in history[-1]:
        xs = [r["epoch"] for r in history if "train/accept_rate" in r]
        ys = [r["train/accept_rate"] for r in history if "train/accept_rate" in r]
        ax_acc.plot(xs, ys, marker="s", label="masked views accepted")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{method} pre-training", fontsize=9)
    save_figure(fig, path)


def html_gallery(title: str, pngs: Sequence[Path]) -> str:
    """One self-contained HTML page showing `pngs` inline (base64), for viewers that render an
    HTML artifact but cannot follow links to files (the Kubeflow Pipelines UI)."""
    import base64
    import html

    figures = "\n".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"/>'
        f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
        for p in pngs
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>img{max-width:100%}figure{display:inline-block;margin:8px}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{figures}\n</body></html>\n"
    )
