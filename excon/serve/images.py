"""Request images -> uint8 arrays for excon.serve.model, refusing bad input in one line.

Every check that can be made before decoding is: an encoded image's width and height come from
its header (PIL reads only the header on `open`), an array's from its shape, so an 8000 x 8000
image is refused without allocating its pixels. Errors are `BadInput` (a ValueError) whose
message names the image (`image 3: ...`); the server answers them with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMATS = ("PNG", "JPEG")


class BadInput(ValueError):
    """A request the server refuses (HTTP 4xx): one line saying what is wrong."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_batch: int = 32  # images per request: one batched Grad-CAM must fit in memory
    max_side: int = 4096  # pixels; checked from the header, before decoding
    min_side: int = 8  # a 1 x 1 image carries nothing to classify or explain
    max_body_bytes: int = 64 * 2**20  # refused from Content-Length before the body is read
    # pixels of all a request's images together: flat PNGs compress ~1000:1, so the body limit
    # alone would let 32 images of 4096 x 4096 (1.6 GB decoded) through
    max_request_pixels: int = 2 * 4096 * 4096


class PixelBudget:
    """What one request may still decode; taken image by image, before each is decoded."""

    def __init__(self, limits: Limits) -> None:
        self.left, self.total = limits.max_request_pixels, limits.max_request_pixels

    def take(self, index: int, pixels: int) -> None:
        if pixels > self.left:
            raise BadInput(
                f"image {index}: the request's images exceed {self.total} pixels in all "
                "(send fewer or smaller images per request)"
            )
        self.left -= pixels


def check_batch(n: int, limits: Limits) -> None:
    if n < 1:
        raise BadInput("no images in the request")
    if n > limits.max_batch:
        raise BadInput(f"{n} images in one request: the limit is {limits.max_batch}")


def check_size(index: int, height: int, width: int, limits: Limits) -> None:
    if min(height, width) < limits.min_side:
        raise BadInput(
            f"image {index}: {width} x {height} px is too small "
            f"(each side at least {limits.min_side} px)"
        )
    if max(height, width) > limits.max_side:
        raise BadInput(
            f"image {index}: {width} x {height} px is too large "
            f"(each side at most {limits.max_side} px)"
        )


def decode_base64(index: int, text: Any) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise BadInput(f"image {index}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"image {index}: not valid base64") from None


def decode_image(
    index: int, data: bytes, channels: int, limits: Limits, budget: PixelBudget | None = None
) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H, W, channels] (RGB or L, as the training images were)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(f"image {index}: empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses the header only
            if im.format not in FORMATS:
                raise BadInput(f"image {index}: {im.format} is not accepted (PNG or JPEG)")
            check_size(index, im.height, im.width, limits)
            if budget is not None:
                budget.take(index, im.height * im.width)
            im.load()  # decodes: a truncated or damaged file fails here
            out = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise BadInput(f"image {index}: not a PNG or JPEG image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow reports truncated or damaged data as OSError or SyntaxError
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BadInput(f"image {index}: not a readable image ({reason})") from None
    return out.reshape(out.shape[0], out.shape[1], channels)


def check_array_shape(index: int, shape: Sequence[int], channels: int, limits: Limits) -> None:
    """An array image's shape [H, W, C] (or [H, W] for 1 channel), before its values are read."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2 and channels == 1:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise BadInput(f"image {index}: expected an array [H, W, {channels}], got shape {shape}")
    check_size(index, shape[0], shape[1], limits)
    if shape[2] != channels:
        raise BadInput(
            f"image {index}: {shape[2]} channels, the model takes {channels} (shape [H, W, C])"
        )


def nested_shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested JSON list read from its first elements (no array is built)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def full_shape(shape: Sequence[int], channels: int) -> tuple[int, ...]:
    """[H, W] of a 1-channel image -> [H, W, 1]; other shapes unchanged."""
    shape = tuple(int(s) for s in shape)
    return (*shape, 1) if channels == 1 and len(shape) == 2 else shape


def to_uint8(index: int, value: Any, shape: Sequence[int]) -> np.ndarray:
    """Numbers (a nested list or flat data) -> a uint8 array of `shape`; values must be
    integers 0..255."""
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "iuf":
            raise ValueError("not all numbers")
        arr = arr.reshape(tuple(shape))
    except ValueError as e:
        reason = str(e).split(".")[0].split(":")[0]
        raise BadInput(
            f"image {index}: not a uint8 array of shape {list(shape)} ({reason})"
        ) from None
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
        raise BadInput(f"image {index}: array values must be integers 0..255")
    return arr.astype(np.uint8)
