"""Load, preprocess, predict and explain: the one copy the pyfunc, `excon explain` and the
KServe server share.

Input contract: uint8 images `[H, W, C]` of any size (C = the model's channels), as a batch
array `[N, H, W, C]` (`[N, H, W]` for 1-channel models) or a list of arrays of different
sizes. Each is resized to the training size exactly as `excon prepare` resized the training
images (PIL bilinear, `excon.data.sources.images.load_rgb`), then normalised as evaluation's
"standard" view. Output: float32 class probabilities `[N, num_classes]` of encoder + the
val-selected probe head; `explain_images` adds the Grad-CAM map of the predicted (or a named)
class, in one batched call, at the layer the model was trained with.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from safetensors.torch import load_file

from excon.artifacts import MODEL_META, MODEL_WEIGHTS, build_network
from excon.guard import refuse_nonfinite
from excon.models import ExConNet
from excon.tracking import RegistryError

PROBE_HEAD = "probe_head.safetensors"  # = excon.probe.PROBE_HEAD (not imported: heavy module)
Images = np.ndarray | Sequence[np.ndarray]


def build_model(
    meta: dict, weights: dict[str, torch.Tensor], head: dict[str, torch.Tensor]
) -> ExConNet:
    """ExConNet from model.json + its safetensors state, classifier = the probe head."""
    model = build_network(meta)
    model.load_state_dict(weights)
    probe = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
    probe.load_state_dict(head)
    model.classifier = probe
    return model.eval()


def load_files(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ExConNet, dict]:
    """Rebuild encoder + probe head from a directory holding our three files (refused when a
    weight is not finite)."""
    directory = Path(directory)
    for name in (MODEL_META, MODEL_WEIGHTS, PROBE_HEAD):
        if not (directory / name).is_file():
            raise RegistryError(f"{directory / name}: missing")
    meta = json.loads((directory / MODEL_META).read_text())
    weights = load_file(str(directory / MODEL_WEIGHTS), device="cpu")
    head = load_file(str(directory / PROBE_HEAD), device="cpu")
    refuse_nonfinite({**weights, **{f"probe.{k}": v for k, v in head.items()}}, str(directory))
    return build_model(meta, weights, head).to(device), meta


def image_size(meta: dict) -> tuple[int, int]:
    """(height, width) the model was trained at."""
    size = meta["image_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def class_names(meta: dict) -> list[str]:
    return list(meta.get("class_names") or [str(i) for i in range(meta["num_classes"])])


def _as_list(meta: dict, images: Images) -> list[np.ndarray]:
    """The batch as a list of uint8 [H, W, C] arrays, checked against the model's channels."""
    c = meta["in_channels"]
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        arr = np.asarray(images)
        if arr.ndim == 3 and c == 1:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"expected uint8 images [N, H, W, {c}], got shape {arr.shape}")
        images = list(arr)
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim == 2 and c == 1:
            im = im[..., None]
        if im.ndim != 3 or im.shape[-1] != c:
            raise ValueError(f"image {i}: expected uint8 [H, W, {c}], got shape {im.shape}")
        if im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 (0..255), got dtype {im.dtype}")
        out.append(im)
    return out


def resize_like_training(meta: dict, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [h, w, C] at the training size, resized as `excon prepare`
    resized the training images (PIL bilinear); unchanged when already that size."""
    from PIL import Image

    h, w = image_size(meta)
    if image.shape[:2] == (h, w):
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out.reshape(h, w, image.shape[-1])


def preprocess(meta: dict, images: Images, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 images of any size -> normalised float [N, C, h, w] at the training size, exactly
    as training saw its images: prepare's resize, then evaluation's "standard" view."""
    from excon.data.views import build_transform

    batch = np.stack([resize_like_training(meta, im) for im in _as_list(meta, images)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    transform = build_transform(
        "standard", image_size(meta), meta["mean"], meta["std"], meta["in_channels"]
    )
    return transform(x).to(device)


@torch.no_grad()
def predict_proba(model: ExConNet, meta: dict, images: Images) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    return torch.softmax(model(preprocess(meta, images, device)).float(), dim=1).cpu().numpy()


def gradcam_layer(meta: dict) -> str:
    """The layer the model was trained (and evaluated) with: model.json's, else the reference's."""
    from excon.saliency import default_layer

    return meta.get("gradcam_layer") or default_layer(meta["arch"], max(image_size(meta)))


def explain_images(
    model: ExConNet, meta: dict, images: Images, targets: Sequence[int | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], Grad-CAM maps [N, 1, h, w] in [0, 1] at the training size) of the
    class `targets[i]` (None: the predicted class), one batched Grad-CAM for the whole batch."""
    from excon.saliency import GradCam, normalise_maps

    device = next(model.parameters()).device
    model.eval()
    x = preprocess(meta, images, device)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)
    chosen = probs.argmax(dim=1)
    if targets is not None:
        given = [(i, t) for i, t in enumerate(targets) if t is not None]
        for i, t in given:
            if not 0 <= int(t) < probs.shape[1]:
                raise ValueError(f"image {i}: class {t} out of range 0..{probs.shape[1] - 1}")
            chosen[i] = int(t)
    maps = GradCam(model, gradcam_layer(meta))(x, chosen)
    return probs.cpu().numpy(), normalise_maps(maps).cpu().numpy()


def overlay(image: np.ndarray, heat: np.ndarray, min_side: int = 224) -> Any:
    """PIL RGB image blended 50/50 with the jet-coloured map (upscaled to at least `min_side`)."""
    from matplotlib import colormaps
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    scale = max(1, math.ceil(min_side / min(pil.size)))
    size = (pil.size[0] * scale, pil.size[1] * scale)
    pil = pil.resize(size, Image.Resampling.BILINEAR)
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    colored = colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3]
    blend = 0.5 * np.asarray(pil, dtype=np.float32) / 255.0 + 0.5 * colored
    return Image.fromarray((np.clip(blend, 0, 1) * 255).round().astype(np.uint8))


def top_classes(meta: dict, probs: np.ndarray, k: int) -> list[dict]:
    """[{class, index, prob}] of the k most probable classes of one image, most probable first."""
    names = class_names(meta)
    order = np.argsort(-probs, kind="stable")[: max(1, k)]
    return [{"class": names[int(j)], "index": int(j), "prob": float(probs[j])} for j in order]


class ExConPyfunc(mlflow.pyfunc.PythonModel):
    """Encoder + probe head; `predict`: uint8 [N, H, W, C] -> probabilities [N, K]."""

    # The input contract is the tensor signature logged with the model, not type hints: this
    # tells MLflow not to wrap `predict` in its type-hint validation.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.model, self.meta = load_files(Path(context.artifacts[MODEL_WEIGHTS]).parent)

    def predict(self, context: Any, model_input, params: Any = None) -> Any:  # noqa: ANN001
        return predict_proba(self.model, self.meta, model_input)


def load_registered(
    uri: str, device: str | torch.device = "cpu", tracking_uri: str | None = None
) -> tuple[ExConNet, dict]:
    """(network, model.json) of `models:/name@alias`, `models:/name/version` or any MLflow model
    URI, through MLflow's public API: the pyfunc is loaded and unwrapped (its load_context
    rebuilds encoder + probe head from safetensors; nothing is unpickled)."""
    from mlflow.exceptions import MlflowException

    from excon import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow = tracking._mlflow()  # its HTTP retry/timeout defaults
    previous = mlflow.get_tracking_uri()
    if tracking_uri:  # for this call only: the caller's store stays its own
        mlflow.set_tracking_uri(tracking_uri)
    try:
        python_model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except (MlflowException, OSError) as e:
        reason = (str(getattr(e, "message", e)).splitlines() or [type(e).__name__])[0]
        raise RegistryError(f"{uri}: cannot load the model ({reason})") from e
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(previous)
    if not hasattr(python_model, "meta"):
        raise RegistryError(f"{uri}: not an excon model ({type(python_model).__name__})")
    return python_model.model.to(device).eval(), python_model.meta


def explain_files(
    uri: str,
    image_paths: list[str | Path],
    out_dir: str | Path,
    top: int = 3,
    tracking_uri: str | None = None,
) -> list[dict]:
    """Predict and explain image files with the registered model at `uri` (`excon explain`).

    Returns per image {path, predicted, top: [{class, index, prob}], probs (all classes, sum 1),
    overlay_png}; writes a Grad-CAM overlay PNG per image into `out_dir` (atomically)."""
    from excon.artifacts import atomic_path
    from excon.data.sources.images import open_image

    # images first: an unreadable file fails in one line before any model is downloaded
    # (16-bit files scaled, unreadable ones a DataError naming the file)
    originals = [open_image(p, "RGB") for p in image_paths]
    if not originals:
        return []
    model, meta = load_registered(uri, tracking_uri=tracking_uri)
    mode = "L" if meta["in_channels"] == 1 else "RGB"  # 8-bit RGB -> L: nothing clipped
    arrays = [np.asarray(im.convert(mode), dtype=np.uint8) for im in originals]
    probs, maps = explain_images(model, meta, arrays)
    names = class_names(meta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results = []
    for i, p in enumerate(image_paths):
        fname = f"{Path(p).stem}_gradcam.png"
        if fname in used:
            fname = f"{Path(p).stem}_{i}_gradcam.png"
        used.add(fname)
        target = out_dir / fname
        with atomic_path(target) as tmp:
            overlay(np.asarray(originals[i]), maps[i, 0]).save(tmp, format="PNG")
        tops = top_classes(meta, probs[i], top)
        results.append(
            {
                "path": str(p),
                "predicted": tops[0]["class"],
                "top": tops,
                "probs": {names[j]: float(probs[i, j]) for j in range(len(names))},
                "overlay_png": str(target),
            }
        )
    return results


def print_results(results: list[dict]) -> None:
    """One line per explained image (for the CLI)."""
    for r in results:
        tops = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        print(f"{r['path']}: {tops} -> {r['overlay_png']}")
