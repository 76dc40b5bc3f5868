"""Writers of tiny datasets in the EXACT original on-disk formats the readers parse.

Tests reach the writers through fixtures (not imports), so this works in any import mode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

# --- generic -----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Evil:
    """Unpickling this runs os.system: a readers' allow-list must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


# --- CIFAR-100 (Python 2 pickles) --------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: every string as (SHORT_)BINSTRING, none as unicode."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_py2_text(self, obj: str) -> None:
        self.save_py2_str(obj.encode("latin1"))  # Python 2 had no separate text type here

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_text


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2 + numpy 1.x named the module numpy.core (GLOBAL opcode, newline-terminated).
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar100(
    raw: Path, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """raw/cifar-100-python/{train,test,meta}; returns the HWC images and labels written."""
    rng = np.random.default_rng(seed)
    root = raw / "cifar-100-python"
    root.mkdir(parents=True)
    out = {}
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        batch = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),  # planar CHW rows
        }
        (root / name).write_bytes(py2_pickle(batch))
        out[f"{name}_images"], out[f"{name}_labels"] = images, labels.astype(np.int64)
    meta = {
        b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
    }
    (root / "meta").write_bytes(py2_pickle(meta))
    return out


# --- Animal-MNIST (gzip'd numpy pickles) -------------------------------------------------


def write_animals(root: Path, per_class: int = 10, seed: int = 0) -> dict[str, object]:
    """The two .gz files as the package ships them; returns arrays and their sha256."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)  # sorted blocks, like the real one
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    images[images < 128] = 0  # silhouette-like: plenty of background
    for name, arr in (("animal_data_version_3.gz", images), ("animal_label_version_3.gz", labels)):
        with gzip.open(root / name, "wb") as f:
            pickle.dump(arr, f, protocol=4)
    shas = {p.name: sha256(p) for p in root.glob("*.gz")}
    return {"images": images, "labels": labels, "sha256": shas}


# --- Tiny ImageNet (folder of JPEGs + text annotations) ----------------------------------

TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]
TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
}


def _jpeg(path: Path, rng: np.random.Generator, gray: bool = False) -> None:
    shape = (64, 64) if gray else (64, 64, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, "JPEG")


def write_tinyimagenet(raw: Path, train_per_class: int = 5, val_per_class: int = 2) -> Path:
    """raw/tiny-imagenet-200 with 3 classes; one train JPEG is grayscale (as in the real set)."""
    rng = np.random.default_rng(0)
    root = raw / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    words = {"n00001740": "entity", **TINY_WORDS, "n99999999": "unused, other"}
    (root / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in words.items()))
    for c, wnid in enumerate(TINY_WNIDS):
        img_dir = root / "train" / wnid / "images"
        img_dir.mkdir(parents=True)
        lines = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            _jpeg(img_dir / name, rng, gray=(c, i) == (1, 0))
            lines.append(f"{name}\t{i}\t{c}\t{40 + i}\t{50 + c}\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    ann = []
    for j in range(val_per_class * len(TINY_WNIDS)):
        name = f"val_{j}.JPEG"
        _jpeg(root / "val" / "images" / name, rng)
        ann.append(f"{name}\t{TINY_WNIDS[j % 3]}\t{j}\t{j + 1}\t{30 + j}\t{63 - j}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(ann))
    return root


def decode_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --- ImageFolder (PNG trees) -------------------------------------------------------------


def write_imagefolder(
    root: Path, classes: dict[str, int], size: int = 8, seed: int = 0
) -> dict[Path, np.ndarray]:
    """root/<class>/img_<i>.png (lossless, already `size` square); returns path -> pixels."""
    rng = np.random.default_rng(seed)
    written = {}
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            path = root / cls / f"img_{i}.png"
            Image.fromarray(pixels).save(path)
            written[path] = pixels
    return written


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download fails the test instead of touching the network."""
    import torchvision.datasets.utils as tv_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"tests must not download: {args}")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tv_utils, "download_url", refuse)


@pytest.fixture
def formats() -> SimpleNamespace:
    """The writers above, for tests that build variants of the fixtures."""
    return SimpleNamespace(
        sha256=sha256,
        Evil=Evil,
        py2_pickle=py2_pickle,
        write_cifar100=write_cifar100,
        write_animals=write_animals,
        write_tinyimagenet=write_tinyimagenet,
        write_imagefolder=write_imagefolder,
        decode_rgb=decode_rgb,
        tiny_wnids=TINY_WNIDS,
    )


@pytest.fixture
def animals_raw(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """Fixture animal files, with the reader's expected checksums pointed at them."""
    from excon.data.sources import animals

    root = tmp_path / "Animal_MNIST"
    info = write_animals(root)
    monkeypatch.setattr(animals, "EXPECTED_SHA256", info["sha256"])
    return root, info
