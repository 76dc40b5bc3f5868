"""Decoding image files into uint8 RGB arrays, with errors that name the file."""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from excon.data.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def load_rgb(path: Path, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3]: converted to RGB, bilinear-resized if needed."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def load_rgb_many(paths: Sequence[Path], size: int, workers: int | None = None) -> np.ndarray:
    """Images as uint8 [N, size, size, 3] in `paths` order (decoded on a thread pool)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    # PIL decodes with the GIL released, so threads give real parallelism here.
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        for i, arr in enumerate(pool.map(lambda p: load_rgb(p, size), paths)):
            out[i] = arr
    return out
