"""Decoding image files into uint8 RGB (or L) images, with errors that name the file.

Every reader of image files (imagefolder, Tiny ImageNet, `excon explain`) goes through
`open_image`, so a 16-bit file is scaled the same way everywhere. Pillow's own `convert("L")`
and `convert("RGB")` clip 16-bit and float pixels to 255: a 16-bit PNG would come out almost
all white.
"""

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from excon.data.errors import DataError
from excon.fs import confined

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

# Single-channel modes wider than 8 bits. Pillow opens a 16-bit grayscale PNG or TIFF as
# "I;16" (or "I;16B"), a 16-bit PGM as "I" (32-bit integers holding 0..65535).
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def to_uint8_image(im: Image.Image, mode: Literal["RGB", "L"]) -> Image.Image:
    """`im` as an 8-bit `mode` image, high-bit-depth pixels scaled by their range, not clipped.

    - "I;16*" and "I": read as 16-bit (0..65535; "I" is what Pillow gives for 16-bit PGM and
      some TIFFs), scaled by 255/65535 and rounded, so 65535 -> 255 and 32768 -> 128. Values
      outside 0..65535 (a genuinely 32-bit "I" TIFF) are clipped to that range first.
    - "F" (float TIFF): [0, 1] when every finite value lies there (the usual normalised float
      image), otherwise taken as 0..255 and clipped, as Pillow does; NaN becomes 0.
    - Everything else (1, L, P, LA, PA, RGB, RGBA, CMYK, YCbCr...) goes through Pillow's
      `convert`. 48-bit RGB and 64-bit RGBA PNGs need nothing here: Pillow already opens them
      as "RGB"/"RGBA" holding the high byte of each 16-bit value (within 1 of value/257).
    """
    if im.mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(im, dtype=np.float64), 0, 65535)
        gray = np.rint(values * (255 / 65535)).astype(np.uint8)
    elif im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255, neginf=0)
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        gray = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
    else:
        return im.convert(mode)
    return Image.fromarray(gray).convert(mode)


def open_image(path: str | Path, mode: Literal["RGB", "L"]) -> Image.Image:
    """The image file at `path`, decoded and converted by `to_uint8_image`.

    A missing, empty, truncated or non-image file is a one-line DataError naming `path`."""
    try:
        with Image.open(path) as im:
            return to_uint8_image(im, mode)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (unknown format or not an image)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports a truncated or damaged file as OSError, ValueError or SyntaxError.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a readable image ({reason})") from exc


def confine_files(root: Path, files: Iterable[Path]) -> None:
    """Refuse (DataError) any of `files`, found under `root`, that leads out of `root` through
    a symlink (of the file or of a folder above it): a dataset reads only its own files."""
    root = Path(root)
    checked: set[Path] = set()
    for path in files:
        if path.parent not in checked:  # folders are few: resolve each one once
            confined(root, path.parent.relative_to(root), str(path.parent), error=DataError)
            checked.add(path.parent)
        if path.is_symlink():
            confined(root, path.relative_to(root), str(path), error=DataError)


def load_rgb(path: Path, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3]: converted to RGB, bilinear-resized if needed."""
    rgb = open_image(path, "RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_rgb_many(paths: Sequence[Path], size: int, workers: int | None = None) -> np.ndarray:
    """Images as uint8 [N, size, size, 3] in `paths` order (decoded on a thread pool)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    # PIL decodes with the GIL released, so threads give real parallelism here.
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        for i, arr in enumerate(pool.map(lambda p: load_rgb(p, size), paths)):
            out[i] = arr
    return out
