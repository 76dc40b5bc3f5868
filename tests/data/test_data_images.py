"""The shared image decoder: high-bit-depth files scaled by their range (not clipped to white),
unreadable files a one-line DataError naming the file, symlinks out of a dataset refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excon.data.errors import DataError
from excon.data.sources.images import confine_files, load_rgb, open_image, to_uint8_image

# One row of 0..65535 (both ends included) and its expected 8-bit value, value * 255 / 65535.
RAMP16 = np.linspace(0, 65535, 64).round().astype(np.uint16)
RAMP8 = np.rint(RAMP16 / 257).astype(np.uint8)


def gray16(rows: int = 2) -> np.ndarray:
    return np.tile(RAMP16, (rows, 1))


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG written chunk by chunk (Pillow cannot write 48-bit RGB): gray [H, W] or
    RGB [H, W, 3] uint16."""
    h, w = pixels.shape[:2]
    color = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(gray16()).save(path)  # Pillow writes uint16 as a 16-bit grayscale PNG
    with Image.open(path) as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("L")).mean() > 250  # what plain convert gives: white
    gray = np.asarray(open_image(path, "L"))
    assert gray.dtype == np.uint8 and np.array_equal(gray[0], RAMP8)
    rgb = np.asarray(open_image(path, "RGB"))
    assert rgb.shape == (2, 64, 3) and np.array_equal(rgb[1, :, 2], RAMP8)


def test_mid_grey_16bit_is_128(tmp_path):
    path = tmp_path / "mid.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    assert np.unique(np.asarray(open_image(path, "L"))).tolist() == [128]


@pytest.mark.parametrize(
    ("suffix", "pixels"),
    [
        (".pgm", gray16()),  # Pillow opens a 16-bit PGM as mode "I"
        (".tif", gray16()),  # little-endian 16-bit TIFF: "I;16"
        (".tiff", gray16().byteswap().view(">u2")),  # big-endian: "I;16B"
    ],
)
def test_other_16bit_files(tmp_path, suffix, pixels):
    path = tmp_path / f"g{suffix}"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I", "I;16", "I;16B")
    assert np.array_equal(np.asarray(open_image(path, "L"))[0], RAMP8)


def test_48bit_rgb_png_is_within_one_of_the_scaled_value(tmp_path):
    pixels = np.stack([gray16(), gray16()[:, ::-1], np.full((2, 64), 32768, np.uint16)], -1)
    path = write_png16(tmp_path / "rgb48.png", pixels)
    with Image.open(path) as im:
        assert im.mode == "RGB"  # Pillow keeps the high byte of each 16-bit sample
    rgb = np.asarray(open_image(path, "RGB")).astype(int)
    assert np.abs(rgb - np.rint(pixels / 257)).max() <= 1
    assert (rgb[..., 2] == 128).all()


def test_int32_values_beyond_16bit_are_clipped():
    im = Image.fromarray(np.array([[-5, 0, 65535, 70000]], dtype=np.int32))
    assert im.mode == "I"
    assert np.asarray(to_uint8_image(im, "L")).tolist() == [[0, 0, 255, 255]]


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_uint8_image(unit, "L")).tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[0.0, 2.0, 127.6, 300.0, np.nan]], dtype=np.float32))
    assert np.asarray(to_uint8_image(wide, "L")).tolist() == [[0, 2, 128, 255, 0]]


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "L", "RGB"])
def test_eight_bit_modes_use_pillow_convert(mode):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode)
    for target in ("RGB", "L"):
        out = to_uint8_image(im, target)
        assert out.mode == target and out.size == (5, 6)
        assert np.array_equal(np.asarray(out), np.asarray(im.convert(target)))


def test_load_rgb_resizes_after_scaling(tmp_path):
    path = tmp_path / "mid.png"
    Image.fromarray(np.full((10, 6), 65535, dtype=np.uint16)).save(path)
    arr = load_rgb(path, 4)
    assert arr.shape == (4, 4, 3) and (arr == 255).all()


def _truncated_png(path: Path) -> Path:
    full = path.with_name("full.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(full)
    path.write_bytes(full.read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_text("just some notes\n"), r"unknown format or not an image"),
        (lambda p: p.write_bytes(b""), r"unknown format or not an image"),
        (_truncated_png, r"truncated"),
    ],
    ids=["text-file", "zero-bytes", "truncated-png"],
)
def test_unreadable_file_is_one_line_naming_it(tmp_path, make, reason):
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(DataError, match=rf"^{path}: not a readable image \(.*{reason}") as e:
        open_image(path, "RGB")
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.png'}: image file not found$"):
        open_image(tmp_path / "nope.png", "L")
    with pytest.raises(DataError, match=rf"^{tmp_path}: not a readable image"):
        open_image(tmp_path, "L")


def test_confine_files(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "secret.png"
    (root / "a").mkdir(parents=True)
    outside.write_bytes(b"x")
    (root / "a" / "ok.png").write_bytes(b"x")
    (root / "a" / "alias.png").symlink_to(root / "a" / "ok.png")  # inside: fine
    confine_files(root, [root / "a" / "ok.png", root / "a" / "alias.png"])
    (root / "a" / "out.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"a/out.png: path 'a/out.png' points outside .*refused"):
        confine_files(root, [root / "a" / "ok.png", root / "a" / "out.png"])
    (tmp_path / "elsewhere").mkdir()
    (root / "b").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"root/b: path 'b' points outside"):
        confine_files(root, [root / "b" / "x.png"])
